"""axmethods: target-model loading, activations, interventions, methods, trainers, inference, steering dictionaries.

Submodules import torch and transformers; import them directly (`from axmethods.models import
load_target_model`) so that `import axmethods` alone stays cheap.
"""

__version__ = "0.1.0"
