import json
import logging
import random

import pytest

from axdata.concepts import Concept, ConceptFileError, load_concepts, write_concepts_jsonl

NP = "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path, **kwargs) -> str:
    with pytest.raises(ConceptFileError) as info:
        load_concepts(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)) and "Fix:" in message
    return message


# --- formats -----------------------------------------------------------------------------------------

def test_csv_without_header_like_axbench(tmp_path):
    path = _write(tmp_path, "c.csv", f"terms related to deception,{NP}/8927\n"
                                     f'"employment, employees",{NP}/7490\n')
    concepts = load_concepts(path)
    assert concepts == [Concept(0, "terms related to deception", f"{NP}/8927"),
                        Concept(1, "employment, employees", f"{NP}/7490")]


def test_csv_with_header_and_without_refs(tmp_path):
    path = _write(tmp_path, "c.csv", "concept,ref\ncats,\ndogs,http://x/1\n")
    assert [(c.concept, c.ref) for c in load_concepts(path)] == [("cats", None), ("dogs", "http://x/1")]


def test_txt_one_per_line(tmp_path):
    path = _write(tmp_path, "c.txt", "cats\n\n  dogs  \n")
    assert [(c.concept_id, c.concept, c.ref) for c in load_concepts(path)] == [(0, "cats", None), (1, "dogs", None)]


def test_jsonl_axbench_metadata_keeps_ids_genres_and_extra_keys(tmp_path):
    lines = [
        {"concept_id": 3, "concept": "C++ syntax", "ref": f"{NP}/1", "concept_genres_map": {"C++ syntax": ["code"]}},
        {"concept_id": 1, "concept": "roots", "ref": f"{NP}/2", "concept_genres_map": {"roots": ["math", "text"]},
         "note": "kept"},
    ]
    path = _write(tmp_path, "metadata.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    concepts = load_concepts(path)
    assert [c.concept_id for c in concepts] == [1, 3]
    assert concepts[0].genres == ("math", "text") and concepts[0].genre == "math"
    assert concepts[0].extra == {"note": "kept"}
    out = tmp_path / "out.jsonl"
    write_concepts_jsonl(out, concepts)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [lines[1], lines[0]]


def test_neuronpedia_export_keeps_first_description_per_feature(tmp_path, caplog):
    items = [
        {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "8927", "description": " deception ",
         "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"},
        {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": "8927", "description": "second"},
        {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": 56, "description": "religion"},
    ]
    path = _write(tmp_path, "np.json", json.dumps(items, indent=2))
    with caplog.at_level(logging.INFO, logger="axdata.concepts"):
        concepts = load_concepts(path)
    assert concepts == [Concept(0, "deception", f"{NP}/8927"), Concept(1, "religion", f"{NP}/56")]
    assert "1 later descriptions ignored" in caplog.text


def test_shared_demo_concepts_csv():
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "shared" / "data" / "axbench" / "demo_concepts.csv"
    if not demo.exists():
        pytest.skip(f"shared AxBench data not found at {demo}")
    concepts = load_concepts(demo)
    assert len(concepts) == 4 and concepts[0].ref.startswith("https://www.neuronpedia.org/gemma-2-2b/")


# --- de-duplication and sampling -----------------------------------------------------------------------

def test_dedupe_is_case_and_whitespace_insensitive_and_logged(tmp_path, caplog):
    path = _write(tmp_path, "c.txt", "Cats and dogs\ncats  AND dogs\nbirds\n")
    with caplog.at_level(logging.WARNING, logger="axdata.concepts"):
        concepts = load_concepts(path)
    assert [(c.concept_id, c.concept) for c in concepts] == [(0, "Cats and dogs"), (1, "birds")]
    assert "dropped duplicate concept 'cats  AND dogs' (line 2), same as line 1" in caplog.text
    assert len(load_concepts(path, dedupe=False)) == 3


def test_dedupe_keeps_file_ids(tmp_path):
    lines = [{"concept_id": i, "concept": c} for i, c in enumerate(["a", "b", "A", "c"])]
    path = _write(tmp_path, "m.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    assert [c.concept_id for c in load_concepts(path)] == [0, 1, 3]


def test_sampling_is_deterministic_prefix_stable_and_ignores_global_random(tmp_path):
    path = _write(tmp_path, "c.txt", "".join(f"concept {i}\n" for i in range(50)))
    random.seed(0)
    first = load_concepts(path, max_concepts=10, seed=7)
    random.seed(123)
    random.random()
    assert load_concepts(path, max_concepts=10, seed=7) == first
    assert [c.concept_id for c in first] == list(range(10))
    larger = load_concepts(path, max_concepts=20, seed=7)
    assert [c.concept for c in larger[:10]] == [c.concept for c in first]
    assert [c.concept for c in load_concepts(path, max_concepts=10, seed=8)] != [c.concept for c in first]
    # the permutation of AxBench's random.shuffle after seeding the global generator with the same seed
    expected = [f"concept {i}" for i in range(50)]
    random.seed(7)
    random.shuffle(expected)
    assert [c.concept for c in first] == expected[:10]


def test_sampling_with_file_ids_keeps_them(tmp_path):
    lines = [{"concept_id": i, "concept": f"c{i}"} for i in range(30)]
    path = _write(tmp_path, "m.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    sample = load_concepts(path, max_concepts=5, seed=1)
    assert len(sample) == 5 and all(c.concept == f"c{c.concept_id}" for c in sample)
    assert [c.concept_id for c in sample] == sorted(c.concept_id for c in sample)


def test_sampling_fills_up_after_dropping_duplicates(tmp_path):
    path = _write(tmp_path, "c.txt", "a\nA\nb\nB\nc\n")
    assert len(load_concepts(path, max_concepts=3)) == 3


# --- bad files -------------------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    assert "the file is empty" in _error(_write(tmp_path, "c.csv", "\n  \n"))


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "nope.csv")


def test_unknown_suffix(tmp_path):
    assert "unknown concept file type '.yaml'" in _error(_write(tmp_path, "c.yaml", "cats\n"))


def test_bad_encoding_names_the_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("cats\ndogs\nnaïve".encode("latin-1"))
    message = _error(path)
    assert ", line 3:" in message and "not valid UTF-8" in message and "re-save the file as UTF-8" in message


def test_csv_wrong_columns(tmp_path):
    message = _error(_write(tmp_path, "c.csv", "cats,http://x/1\ndogs,and,cats,http://x/2\n"))
    assert ", line 2:" in message and "4 fields" in message and "quote descriptions" in message


def test_csv_empty_concept(tmp_path):
    message = _error(_write(tmp_path, "c.csv", "cats,http://x/1\n  ,http://x/2\n"))
    assert ", line 2:" in message and "empty concept" in message


def test_csv_with_only_a_ref_column_is_refused(tmp_path):
    message = _error(_write(tmp_path, "c.csv", f"ref\n{NP}/1\n{NP}/2\n"))
    assert ", line 1:" in message and "the header 'ref' is not 'concept' or 'concept,ref'" in message
    message = _error(_write(tmp_path, "d.csv", f"{NP}/1\n{NP}/2\n"))  # no header: a URL is no description
    assert ", line 1:" in message and "is a URL" in message and "description first" in message


def test_txt_urls_need_an_export(tmp_path):
    message = _error(_write(tmp_path, "c.txt", f"{NP}/1\n"))
    assert ", line 1:" in message and "Neuronpedia" in message


def test_jsonl_truncated_line(tmp_path):
    message = _error(_write(tmp_path, "m.jsonl", '{"concept_id": 0, "concept": "a"}\n{"concept_id": 1, "conc'))
    assert ", line 2:" in message and "invalid JSON" in message and "truncated" in message


def test_jsonl_missing_concept_key(tmp_path):
    message = _error(_write(tmp_path, "m.jsonl", '{"concept_id": 0, "description": "a"}\n'))
    assert ", line 1:" in message and "no 'concept' string" in message


def test_jsonl_empty_concept(tmp_path):
    message = _error(_write(tmp_path, "m.jsonl", '{"concept_id": 0, "concept": "a"}\n{"concept_id": 1, "concept": " "}\n'))
    assert ", line 2:" in message and "empty concept" in message


def test_jsonl_duplicate_ids(tmp_path):
    text = '{"concept_id": 0, "concept": "a"}\n{"concept_id": 1, "concept": "b"}\n{"concept_id": 0, "concept": "c"}\n'
    message = _error(_write(tmp_path, "m.jsonl", text))
    assert ", line 3:" in message and "concept_id 0 is already used on line 1" in message


def test_jsonl_mixed_ids(tmp_path):
    message = _error(_write(tmp_path, "m.jsonl", '{"concept_id": 0, "concept": "a"}\n{"concept": "b"}\n'))
    assert ", line 2:" in message and "give every concept an id, or none" in message


def test_jsonl_bad_genres(tmp_path):
    text = json.dumps({"concept_id": 0, "concept": "a", "concept_genres_map": {"a": ["poetry"]}}) + "\n"
    assert "unknown genres ['poetry']" in _error(_write(tmp_path, "m.jsonl", text))
    text = json.dumps({"concept_id": 0, "concept": "a", "concept_genres_map": {"b": ["text"]}}) + "\n"
    assert "no genre list for the concept" in _error(_write(tmp_path, "m.jsonl", text))


def test_neuronpedia_truncated(tmp_path):
    items = [{"modelId": "m", "layer": "l", "index": i, "description": f"d{i}"} for i in range(5)]
    text = json.dumps(items, indent=2)
    message = _error(_write(tmp_path, "np.json", text[: len(text) // 2]))
    assert "invalid JSON" in message and "re-export" in message and ", line " in message


def test_neuronpedia_item_errors_name_the_line(tmp_path):
    items = [{"modelId": "m", "layer": "l", "index": i, "description": f"d{i}"} for i in range(4)]
    items[2]["description"] = ""
    message = _error(_write(tmp_path, "np.json", json.dumps(items, indent=2)))
    assert ", line 14:" in message and "explanation 2 has an empty description" in message  # 6 lines per item
    del items[1]["layer"]
    message = _error(_write(tmp_path, "np.json", json.dumps(items, indent=2)))
    assert ", line 8:" in message and "explanation 1 lacks layer" in message


def test_neuronpedia_not_a_list(tmp_path):
    message = _error(_write(tmp_path, "np.json", '{"modelId": "m"}'))
    assert "expected a list of explanations" in message


def test_max_concepts_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_concepts"):
        load_concepts(_write(tmp_path, "c.txt", "a\n"), max_concepts=0)


# --- concept types: topics and rules -----------------------------------------------------------------

def _jsonl(tmp_path, records, name="m.jsonl"):
    return _write(tmp_path, name, "".join(json.dumps(record) + "\n" for record in records))


def test_concept_type_defaults_to_topic_and_axbench_metadata_round_trips_unchanged(tmp_path):
    records = [{"concept_id": 0, "concept": "cats", "ref": None}, {"concept_id": 1, "concept": "dogs", "ref": None}]
    concepts = load_concepts(_jsonl(tmp_path, records))
    assert [c.concept_type for c in concepts] == ["topic", "topic"] and concepts[0] == Concept(0, "cats")
    out = tmp_path / "out.jsonl"
    write_concepts_jsonl(out, concepts)
    assert [json.loads(line) for line in out.read_text().splitlines()] == records  # no concept_type added


def test_rules_keep_their_type_and_checker_and_a_mixed_list_writes_every_type(tmp_path):
    records = [{"concept_id": 0, "concept": "Write in capitals.", "concept_type": "rule", "checker": "all_capital"},
               {"concept_id": 1, "concept": "the sea", "concept_type": "topic"},
               {"concept_id": 2, "concept": "Talk like a pirate.", "concept_type": "rule", "checker": None}]
    concepts = load_concepts(_jsonl(tmp_path, records))
    assert [(c.concept_type, c.checker) for c in concepts] == [("rule", "all_capital"), ("topic", None),
                                                                ("rule", None)]
    assert "concept_type" not in concepts[0].extra
    out = tmp_path / "out.jsonl"
    write_concepts_jsonl(out, concepts)
    assert [json.loads(line)["concept_type"] for line in out.read_text().splitlines()] == ["rule", "topic", "rule"]
    assert load_concepts(out) == concepts


def test_a_list_mixing_rules_with_untyped_concepts_names_the_file_and_the_untyped_line(tmp_path):
    records = [{"concept_id": 0, "concept": "Write in capitals.", "concept_type": "rule"},
               {"concept_id": 1, "concept": "the sea", "concept_type": "topic"},
               {"concept_id": 2, "concept": "dogs"}]
    message = _error(_jsonl(tmp_path, records))
    assert message.startswith(f"{tmp_path / 'm.jsonl'}, line 3:")
    assert "mixes rules (first on line 1)" in message and '"concept_type": "topic" or "rule"' in message


def test_unknown_concept_type_and_misplaced_checker_are_errors(tmp_path):
    message = _error(_jsonl(tmp_path, [{"concept_id": 0, "concept": "a", "concept_type": "Rule"}]))
    assert ", line 1:" in message and "concept_type 'Rule' is not one of topic, rule" in message
    message = _error(_jsonl(tmp_path, [{"concept_id": 0, "concept": "a", "checker": "all_capital"}]))
    assert "checker 'all_capital' on a concept that is not a rule" in message
    message = _error(_jsonl(tmp_path, [{"concept_id": 0, "concept": "a", "concept_type": "rule", "checker": 3}]))
    assert "checker 3" in message


def test_packaged_rule_list_loads_whole_with_unique_ids():
    from axdata.concepts import load_rule_concepts

    rules = load_rule_concepts()
    assert len(rules) >= 20 and [r.concept_id for r in rules] == list(range(len(rules)))
    assert all(r.concept_type == "rule" and r.genre == "text" for r in rules)
