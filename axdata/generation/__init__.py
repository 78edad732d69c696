"""Dataset generation: concepts in, AxBench-style splits out (genre, contrast concepts, examples, pools, templates).

The LLM these steps ask lives in `axdata.llm`; the judge uses it too.
"""
