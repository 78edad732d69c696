"""axdata: concepts, schema, LLM client, generation steps, dataset builders, Hub I/O and cards."""

__version__ = "0.1.0"
