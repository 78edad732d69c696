"""Preference-trained and LM-objective steering on TRL (RePS, BiPO, "Lang."), plus SFT / LoRA-SFT baselines.

    from axmethods.trainers import RePSConfig, RePSTrainer
    trainer = RePSTrainer(model=target, args=RePSConfig(layer=10), train_dataset=preference_df, concepts=concepts)
    trainer.train()
    dictionary = trainer.export()

The family's methods and their paper presets are entries of the one registry, `axmethods.registry.METHODS`.
"""

from axmethods.trainers.artifacts import AdapterSteerer, ConceptAdapters
from axmethods.trainers.config import RePSConfig
from axmethods.trainers.data import PreferenceDataError, preference_frame


def __getattr__(name: str) -> object:
    # TRL is a heavy import; only code that trains pays for it.
    if name == "RePSTrainer":
        from axmethods.trainers.reps_trainer import RePSTrainer

        return RePSTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["AdapterSteerer", "ConceptAdapters", "PreferenceDataError", "RePSConfig", "RePSTrainer",
           "preference_frame"]
