"""Reports: the leaderboard (methods × metrics with CIs) as markdown and HTML, plots, `.eval_results` files.

`build_report(run_dir or ReportInputs, out_dir)` computes every metric with the plain functions of
`axeval.detection` / `axeval.steering` and writes into `out_dir` (default `<run_dir>/eval`):

    report.md, report.html          the leaderboard and the per-part tables (HTML self-contained: inline PNGs)
    detection.parquet, steering.parquet   per-concept tables behind the leaderboard
    plots/roc.png, plots/steering_factors.png
    plots/agreement_<dataset>.png   judge–human confusion matrices, when `<run_dir>/curation/<dataset>/` holds
                                    labels fetched by `axbench curate fetch` (section "Judge–human agreement")
    .eval_results/<method>.yaml     Hub eval results, one file per method (`axbench eval push` uploads it to that
                                    method's model repo as `.eval_results/axbench-<config>.yaml`)
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

# Figures are built without pyplot: no GUI backend, no global state touched in the caller's process.
from matplotlib.figure import Figure

from axdata.benchmark import read_hub_origin, task_id
from axdata.builders import list_configs
from axdata.cards import render_card
from axdata.embedded import EMBEDDED_MODELS
from axdata.errors import InputError
from axdata.hashing import file_hash
from axdata.io import atomic_path, atomic_write_text
from axeval import detection, steering
from axeval.judge import summarize_judgements
from axeval.rundir import LEADERBOARD_FILE, RunDirectory
from axeval.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, ConfidenceInterval, by_method, json_value

logger = logging.getLogger(__name__)

SMALL_SAMPLE = 10  # below this many concepts, bootstrap intervals are flagged as rough
JUDGE_FREE, JUDGE = "judge-free", "judge"  # which columns lead the leaderboard (Report.lead)
LATENT_FILE, IMBALANCE_FILE, JUDGEMENTS_FILE = "inference/latent.parquet", "inference/latent_imbalance.parquet", \
    "eval/judgements.parquet"
SUPPRESSION_FILE = "eval/suppression_judgements.parquet"  # axeval.stages.suppression.SUPPRESSION_JUDGEMENTS
STAGE_OUTPUTS = (LATENT_FILE, IMBALANCE_FILE, JUDGEMENTS_FILE, SUPPRESSION_FILE)  # what a report of a run directory is built from


def report_stamp(run_dir: str | Path) -> dict[str, str]:
    """The content hash of each stage output the run's report reads (relative path → hash; absent files left out):
    recorded in leaderboard.json, so a publisher can tell a report built from other files (`axeval.verify`)."""
    root = Path(run_dir)
    return {name: file_hash(root / name) for name in STAGE_OUTPUTS if (root / name).is_file()}


@dataclass
class ReportInputs:
    """The frames a report is built from; any of them may be missing (that part is left out)."""

    detection_rows: pd.DataFrame | None = None
    imbalance_rows: pd.DataFrame | None = None
    judgements: pd.DataFrame | None = None
    suppression_judgements: pd.DataFrame | None = None  # with attack, attack_n (axeval.modes)
    title: str = "AxBench report"
    curations: list[Path] = field(default_factory=list)  # labels folders (axbench curate fetch)
    output_scores: pd.DataFrame | None = None  # method, concept_id, output_score, steered (run_output_scores)
    held_out: dict[str, list[int]] = field(default_factory=dict)  # method → concepts its training never saw

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> ReportInputs:
        root = Path(run_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"Run directory {root} does not exist; pass the folder `axbench run` wrote.")
        frames = {name: _read_optional(root / path) for name, path in (
            ("detection_rows", LATENT_FILE), ("imbalance_rows", IMBALANCE_FILE), ("judgements", JUDGEMENTS_FILE),
            ("suppression_judgements", SUPPRESSION_FILE))}
        if all(frame is None for frame in frames.values()):
            raise FileNotFoundError(
                f"{root} holds none of {LATENT_FILE}, {IMBALANCE_FILE}, {JUDGEMENTS_FILE}; run latent inference "
                "or the judge first (axbench run CONFIG resumes where it stopped)."
            )
        from axeval.curation.labels import find_curations
        from axmethods.output_score import run_output_scores

        return cls(**frames, title=f"AxBench report: {root.name}", curations=find_curations(root),
                   output_scores=run_output_scores(RunDirectory(root).dictionaries_dir),
                   held_out=run_held_out(RunDirectory(root).dictionaries_dir))


def _reused(judge: dict[str, Any]) -> str:
    reused = judge.get("reused_cost_usd", 0.0)
    return f" (${reused:.4f} of it reused from the response cache)" if reused else ""


def _read_optional(path: Path) -> pd.DataFrame | None:
    """The frame at `path`; None where there is none or it has no rows (a run whose methods do not detect writes
    an empty latent file: it has no detection section, not a failing one)."""
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    return frame if len(frame) else None


@dataclass
class Report:
    """Every table of a report and where its files went."""

    leaderboard: pd.DataFrame
    detection_summary: pd.DataFrame | None = None
    imbalance_summary: pd.DataFrame | None = None
    steering_summary: pd.DataFrame | None = None
    winrates: pd.DataFrame | None = None
    judge: dict | None = None
    agreement: dict[str, pd.DataFrame] = field(default_factory=dict)  # curation dataset → agreement table
    files: dict[str, Path] = field(default_factory=dict)
    note: str | None = None  # what the run is (and is not) evidence of, in one line
    output_scores: pd.DataFrame | None = None  # section "SAE feature selection (output score)"
    filter_notes: list[str] = field(default_factory=list)  # how many concepts an output-score filter steers
    held_out: pd.DataFrame | None = None  # section "Seen vs held-out concepts" (HyperSteer)
    fluency: pd.DataFrame | None = None  # section "Perplexity vs the judge's fluency"
    suppression_summary: pd.DataFrame | None = None  # per method, no attack (score = HM(2 − concept, instr., fluency))
    attacks: pd.DataFrame | None = None  # per (method, attack, attack_n)
    rules: pd.DataFrame | None = None  # section "Rule concepts": checker vs judge

    def judge_line(self) -> str | None:
        if not self.judge:
            return None
        return (f"Judge: {', '.join(self.judge['judge_model'])} (templates {', '.join(self.judge['judge_template_hash'])}, "
                f"temperature {', '.join(map(str, self.judge['judge_temperature']))}); {self.judge['calls']} calls, "
                f"${self.judge['cost_usd']:.4f}{_reused(self.judge)}; parse failures: {self.judge['parse_failures']} of "
                f"{self.judge['generations']} generations (excluded).")

    def n_concepts(self) -> int:
        """The most concepts any part of the report averages over."""
        counts = [int(frame[column].max()) for frame, column in (
            (self.detection_summary, "auroc_n"), (self.steering_summary, "score_n"),
            (self.suppression_summary, "score_n"))
            if frame is not None and len(frame)]
        return max(counts, default=0)

    @property
    def lead(self) -> str:
        """JUDGE_FREE where every judge is an embedded model (135M–270M: its ratings are close to noise), so the
        judge-free columns (lexical concept score, perplexity) lead and the judge's steering score is secondary;
        JUDGE (AxBench's order, steering score first) otherwise."""
        models = (self.judge or {}).get("judge_model") or []
        return JUDGE_FREE if models and all(model in EMBEDDED_MODELS for model in models) else JUDGE

    def caveats(self) -> list[str]:
        """The report's note, and what a reader must know about its intervals."""
        lines = [self.note] if self.note else []
        if self.lead == JUDGE_FREE and self.steering_summary is not None:
            lines.append(f"The judge ({', '.join(self.judge['judge_model'])}) is an embedded model too small to rate "
                         "reliably: the judge-free columns lead (lexical concept score, perplexity under the "
                         "unsteered model) and its steering score is a secondary column (*).")
        lines += self.filter_notes
        n = self.n_concepts()
        if 0 < n < SMALL_SAMPLE:
            lines.append(f"Intervals over {n} concept{'s' if n != 1 else ''} (fewer than {SMALL_SAMPLE}) are rough: "
                         "a bootstrap over so few concepts understates the uncertainty.")
        return lines

    def by_method(self) -> dict[str, dict[str, Any]]:
        """The leaderboard as plain values keyed by method: detection_*, imbalance_*, steering_*, winrate_*
        fields with their CIs and counts (NaN → None), as `axbench eval report --json` prints it."""
        methods: dict[str, dict[str, Any]] = {}
        for prefix, frame in (("detection_", self.detection_summary), ("imbalance_", self.imbalance_summary),
                              ("steering_", self.steering_summary), ("winrate_", self.winrates),
                              ("suppression_", self.suppression_summary), *attack_frames(self.attacks)):
            for method, values in ({} if frame is None else by_method(frame, prefix)).items():
                methods.setdefault(method, {}).update(values)
        order = list(self.leaderboard["Method"]) if "Method" in self.leaderboard else []
        return {method: methods[method] for method in sorted(methods, key=lambda m: (m not in order,
                                                                                  order.index(m) if m in order else 0))}

    def summary(self) -> str:
        """The leaderboard as plain text, with the judge provenance, the caveats and where the report lies."""
        lines = [_markdown_table(self.leaderboard), *filter(None, [self.judge_line()]), *self.caveats()]
        if "markdown" in self.files:
            lines.append(f"Report: {self.files['markdown']}")
        return "\n".join(lines)


def build_report(
    source: str | Path | ReportInputs,
    out_dir: str | Path | None = None,
    *,
    baseline: str | None = None,
    suppression: bool = False,
    dataset_id: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    parse_failures_as_zero: bool = False,
    note: str | None = None,
) -> Report:
    """Compute the leaderboard from a run directory (or frames) and write every report file to `out_dir`.

    `baseline` names the method winrates are computed against (paper: SAE); None skips winrates.
    `parse_failures_as_zero` scores unparsed judge answers 0, as AxBench did (`protocol: reference`).
    `note` says in one line what the run is (and is not) evidence of; it heads the report and the summary.
    `.eval_results` name the Hub dataset the run used (`run_benchmark_data`: the repo and commit its data was
    pulled from, or `dataset_id`); without one they are not written, and the log says why.
    """
    if isinstance(source, ReportInputs):
        inputs = source
        if out_dir is None:
            raise InputError("build_report: pass out_dir when building from frames (there is no run directory).")
    else:
        inputs = ReportInputs.from_run_dir(source)
        out_dir = Path(source) / "eval" if out_dir is None else out_dir
    out = Path(out_dir)
    report = Report(leaderboard=pd.DataFrame(), note=note)
    plots: dict[str, Path] = {}

    if inputs.detection_rows is not None:
        per_concept = detection.concept_detection(inputs.detection_rows)
        report.detection_summary = detection.summarize_detection(per_concept, n_resamples, seed=seed)
        _write_parquet(per_concept, out / "detection.parquet")
        report.files["detection"] = out / "detection.parquet"
        plots["roc"] = _plot_roc(inputs.detection_rows, report.detection_summary, out / "plots" / "roc.png")
    if inputs.imbalance_rows is not None:
        imbalance_rows = inputs.imbalance_rows if inputs.detection_rows is None else \
            detection.imbalance_frame(inputs.detection_rows, inputs.imbalance_rows)
        per_concept = detection.imbalance_detection(imbalance_rows)
        report.imbalance_summary = detection.summarize_imbalance(per_concept, n_resamples, seed=seed)
    if inputs.judgements is not None:
        scored = steering.score_generations(inputs.judgements, suppression=suppression,
                                            parse_failures_as_zero=parse_failures_as_zero)
        selected = steering.select_factors(scored)
        report.steering_summary = steering.summarize_steering(selected, scored, n_resamples, seed=seed)
        if baseline is not None:
            report.winrates = steering.winrate(selected, baseline)
        if "judge_model" in inputs.judgements.columns:
            report.judge = summarize_judgements(inputs.judgements)
        report.fluency = perplexity_vs_fluency(scored)
        report.rules = rule_table(scored)
        _write_parquet(selected, out / "steering.parquet")
        report.files["steering"] = out / "steering.parquet"
        plots["steering_factors"] = _plot_factor_curves(
            steering.factor_curves(scored), out / "plots" / "steering_factors.png")

    if inputs.suppression_judgements is not None:
        suppressed = steering.score_generations(inputs.suppression_judgements, suppression=True,
                                                parse_failures_as_zero=parse_failures_as_zero)
        per_concept = steering.attack_scores(suppressed)
        attacks = steering.summarize_attacks(per_concept, n_resamples, seed=seed)
        kind = attacks["attack"].map(lambda a: 0 if a == steering.NO_ATTACK else 1 if a == "many-shot" else 2)
        # no attack first, then many-shot by n, then the overwrite variants: the order tables and the plot show
        report.attacks = attacks.assign(_kind=kind).sort_values(["method", "_kind", "attack_n", "attack"]) \
            .drop(columns="_kind").reset_index(drop=True)
        plain = suppressed[suppressed["attack"] == steering.NO_ATTACK]
        report.suppression_summary = steering.summarize_steering(steering.select_factors(plain), plain, n_resamples,
                                                                 seed=seed)
        _write_parquet(per_concept, out / "suppression.parquet")
        report.files["suppression"] = out / "suppression.parquet"
        if report.attacks["attack"].ne(steering.NO_ATTACK).any():
            plots["suppression_attacks"] = _plot_attacks(report.attacks, out / "plots" / "suppression_attacks.png")
        if report.judge is None and "judge_model" in inputs.suppression_judgements.columns:
            report.judge = summarize_judgements(inputs.suppression_judgements)
    if inputs.output_scores is not None:
        report.output_scores, report.filter_notes = output_score_table(
            inputs.output_scores, selected if inputs.judgements is not None else None)
    if inputs.held_out and inputs.judgements is not None:
        report.held_out = held_out_table(selected, inputs.held_out)
    for folder in inputs.curations:
        plots[f"agreement_{folder.name}"] = _agreement(report, folder, out / "plots" / f"agreement_{folder.name}.png")
    report.leaderboard = leaderboard(report)
    report.files |= {f"plot_{name}": path for name, path in plots.items()}
    report.files["markdown"] = out / "report.md"
    atomic_write_text(report.files["markdown"], render_markdown(report, inputs.title, plots, out))
    report.files["html"] = out / "report.html"
    atomic_write_text(report.files["html"], render_html(report, inputs.title, plots))
    report.files["leaderboard"] = out / LEADERBOARD_FILE
    atomic_write_text(report.files["leaderboard"], json.dumps(
        {"methods": report.by_method(), "lead": report.lead, "n_concepts": report.n_concepts(),
         "caveats": report.caveats(), **perplexity_fluency_fields(report.fluency),
         "judge": report.judge_line(), "judge_details": report.judge,
         # how it was built and from what: enough to rebuild it and tell a stale or forged one (axeval.verify)
         "built_with": {"baseline": baseline, "suppression": suppression, "n_resamples": n_resamples, "seed": seed,
                        "parse_failures_as_zero": parse_failures_as_zero, "dataset_id": dataset_id},
         "stamp": None if isinstance(source, ReportInputs) else report_stamp(source)},
        indent=2, default=str) + "\n")
    data = run_benchmark_data(source, dataset_id) if not isinstance(source, ReportInputs) else \
        BenchmarkData(dataset_id) if dataset_id else None
    if data is None:
        logger.info("No .eval_results: the run's data was not pulled from the Hub and no dataset id was given "
                    "(report.dataset_id / --dataset-id); push the dataset (axbench data push) and name it.")
    else:
        for method, path in write_eval_results(report, out / ".eval_results", data).items():
            report.files[f"eval_results_{method}"] = path
    logger.info("Wrote the report to %s.", report.files["markdown"])
    return report


def perplexity_fluency_fields(fluency: pd.DataFrame | None) -> dict[str, Any]:
    """leaderboard.json's perplexity-vs-fluency fields: the rho over all judged generations and its n, and per
    method {"spearman_rho", "n"} (an undefined rho is null; no perplexity column: rho null, n 0, no methods)."""
    if fluency is None:
        return {"perplexity_fluency_spearman": None, "perplexity_fluency_n": 0, "perplexity_fluency_by_method": {}}
    rows = {record["method"]: {"spearman_rho": json_value(record["spearman_rho"]), "n": int(record["n"])}
            for record in fluency.to_dict("records")}
    overall = rows.pop("all")
    return {"perplexity_fluency_spearman": overall["spearman_rho"], "perplexity_fluency_n": overall["n"],
            "perplexity_fluency_by_method": rows}


def _ci(row: pd.Series, prefix: str, digits: int = 3) -> str:
    return ConfidenceInterval(row[f"{prefix}mean"], row[f"{prefix}ci_low"], row[f"{prefix}ci_high"],
                              int(row[f"{prefix}n"])).format(digits)


def leaderboard(report: Report) -> pd.DataFrame:
    """Methods × metrics as display strings ("0.842 [0.801, 0.880]"), sorted by steering then AUROC."""
    columns: dict[str, dict[str, str]] = {}
    sort_keys: dict[str, dict[str, float]] = {}

    def put(method: str, column: str, value: str) -> None:
        columns.setdefault(column, {})[method] = value

    if report.detection_summary is not None:
        for _, row in report.detection_summary.iterrows():
            put(row["method"], "AUROC", _ci(row, "auroc_"))
            put(row["method"], "Hard-negative acc.", _ci(row, "hard_negative_accuracy_")
                + f" (n={int(row['n_hard_negatives'])})")
            sort_keys.setdefault(row["method"], {})["auroc"] = row["auroc_mean"]
    if report.imbalance_summary is not None and len(report.imbalance_summary):
        # The label states the ratio this run had (the demo's is far from AxBench's 1:100).
        ratio = float(report.imbalance_summary["negatives_per_positive"].median())
        for _, row in report.imbalance_summary.iterrows():
            put(row["method"], f"F1 (1:{ratio:.0f})", _ci(row, "f1_"))
    if report.steering_summary is not None:
        judge_free_first = report.lead == JUDGE_FREE
        for _, row in report.steering_summary.iterrows():
            judged = {"Steering*" if judge_free_first else "Steering": _ci(row, "score_"),
                      "Concept / Instr. / Fluency": " / ".join(f"{row[c]:.2f}" for c in steering.RATING_COLUMNS)}
            judge_free = {}
            if not pd.isna(row.get("lexical_score_mean", math.nan)):
                judge_free["Lexical concept %"] = _ci(row, "lexical_score_", digits=1)
            if not pd.isna(row.get("perplexity_mean", math.nan)):
                judge_free["Perplexity"] = _ci(row, "perplexity_", digits=1)
            for column, value in ({**judge_free, **judged} if judge_free_first else {**judged, **judge_free}).items():
                put(row["method"], column, value)
            put(row["method"], "Excluded (parse fail.)", f"{int(row['n_parse_failures'])} / {int(row['n_generations'])}")
            sort_keys.setdefault(row["method"], {})["steering"] = row.get("lexical_score_mean", math.nan) \
                if judge_free_first else row["score_mean"]
    if report.suppression_summary is not None:
        for _, row in report.suppression_summary.iterrows():
            put(row["method"], "Suppression", _ci(row, "score_"))
            if not pd.isna(row.get("lexical_score_mean", math.nan)):
                put(row["method"], "Supp. lexical %", _ci(row, "lexical_score_", digits=1))
        for prefix, frame in attack_frames(report.attacks):
            label = prefix.removeprefix("attack_").rstrip("_")
            for _, row in frame.iterrows():
                put(row["method"], f"Supp. {label}", f"{row['score_mean']:.3f}")
    if report.winrates is not None:
        for _, row in report.winrates.iterrows():
            put(row["method"], f"Winrate vs {row['baseline']}", f"{100 * row['winrate']:.1f}%")
    order = pd.DataFrame.from_dict(sort_keys, orient="index").reindex(columns=["steering", "auroc"])
    methods = order.sort_values(["steering", "auroc"], ascending=False, na_position="last").index.tolist()
    table = pd.DataFrame({"Method": methods})
    for column, values in columns.items():
        table[column] = [values.get(method, "–") for method in methods]
    return table


def _markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no results)"
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def compact(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A summary frame for reading: each `<x>_mean/_ci_low/_ci_high` triple becomes one "mean [low, high]"
    column (its `<x>_n` count left out: the table's concept counts say it), other floats are rounded, and names
    are words ("n_hard_negatives" → "n hard negatives")."""
    shown = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        # The interval's bounds join its mean; its own count repeats the table's concept counts.
        if column.endswith(("_ci_low", "_ci_high")) or (column.endswith("_n") and f"{column[:-2]}_mean" in frame):
            continue
        if column.endswith("_mean") and f"{column[:-5]}_ci_low" in frame.columns:
            prefix = column[:-5]
            shown[f"{prefix.replace('_', ' ')} [95% CI]"] = [
                ConfidenceInterval(mean, low, high, 0).format(digits)
                for mean, low, high in zip(frame[column], frame[f"{prefix}_ci_low"], frame[f"{prefix}_ci_high"])]
        else:
            shown[column.replace("_", " ")] = frame[column].map(
                lambda v: "–" if isinstance(v, float) and math.isnan(v) else f"{v:.{digits}f}" if isinstance(v, float)
                else v)
    return shown.reset_index(drop=True)


_PLOT_TITLES = {"roc": "Concept detection: ROC curves", "steering_factors": "Steering: scores by factor",
                "suppression_attacks": "Suppression under attack"}
_SECTION_NOTES = {
    "Concept detection": "Per method, over concepts: AUROC, hard-negative accuracy at the Youden threshold, "
                         "balanced precision / recall / F1 (hard negatives count as negatives).",
    "Class imbalance": "The same threshold on the concept's rows plus the shared negative pool.",
    "Steering": "Held-out scores at the factor chosen on the selection half (judge ratings 0–2; judge-free: the "
                "lexical concept score, % of words that are the concept's signature words, and the perplexity of "
                "the generation under the unsteered model).",
    "Winrates": "Share of concepts where the method's held-out score beats the baseline's (ties count ½).",
}


def plot_title(name: str) -> str:
    if name.startswith("agreement_"):
        return f"Judge–human agreement: {name.removeprefix('agreement_')}"
    return _PLOT_TITLES.get(name, name.replace("_", " ").capitalize())


def _judge_frame(judge: dict[str, Any]) -> pd.DataFrame:
    rows = [(key.replace("_", " "), ", ".join(map(str, value)) if isinstance(value, list)
             else f"{value:.6g}" if isinstance(value, float) else value) for key, value in judge.items()]
    return pd.DataFrame(rows, columns=["", "value"])


def report_sections(report: Report) -> list[tuple[str, str | None, pd.DataFrame]]:
    """(heading, note, table) of every section, in order: the markdown and the HTML show the same ones."""
    sections: list[tuple[str, str | None, pd.DataFrame]] = [("Leaderboard", None, report.leaderboard)]
    if report.judge:
        sections.append(("Judge", report.judge_line(), _judge_frame(report.judge)))
    for heading, frame in (("Concept detection", report.detection_summary), ("Class imbalance", report.imbalance_summary),
                           ("Steering", report.steering_summary), ("Winrates", report.winrates)):
        if frame is not None:
            sections.append((heading, _SECTION_NOTES[heading], compact(frame)))
    if report.output_scores is not None:
        sections.append(("SAE feature selection (output score)", _OUTPUT_SCORE_NOTE, report.output_scores))
    if report.held_out is not None:
        sections.append(("Seen vs held-out concepts", _HELD_OUT_NOTE, report.held_out))
    if report.fluency is not None:
        sections.append(("Perplexity vs the judge's fluency", _FLUENCY_NOTE, compact(report.fluency)))
    if report.suppression_summary is not None:
        sections.append(("Suppression", _SUPPRESSION_NOTE, compact(report.suppression_summary)))
    if report.attacks is not None and report.attacks["attack"].ne(steering.NO_ATTACK).any():
        sections.append(("Suppression under attack", _ATTACK_NOTE, attack_table(report.attacks)))
    if report.rules is not None:
        sections.append(("Rule concepts: checker vs judge", _RULES_NOTE, compact(report.rules)))
    for dataset, frame in report.agreement.items():
        sections.append((f"Judge–human agreement: {dataset}", _AGREEMENT_NOTE, compact(frame)))
    return sections


_INTRO = "Mean over concepts with 95% bootstrap intervals over concepts."
_OUTPUT_SCORE_NOTE = ("Output score (Arad et al. 2025): the row amplified on a neutral prompt, probability × rank of its "
                      "logit-lens tokens in the next-token distribution (0–1). A filtered method (sae-filtered) steers "
                      "only concepts scoring ≥ its threshold; dropped concepts are not generated and not counted as 0. "
                      "SAE's steering on the kept and on the dropped concepts is shown beside it.")


def output_score_table(scores: pd.DataFrame, selected: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    """Per scored method: concepts steered, output-score median / share ≥ 0.01, steering on its steered concepts;
    and for a filtered method, SAE's steering on the same kept and dropped concepts. Also the caveat lines."""
    from axmethods.output_score import THRESHOLD

    def steering_on(method: str, concept_ids: list[int]) -> str:
        if selected is None or method not in set(selected["method"]):
            return "–"
        rows = selected[(selected["method"] == method) & selected["concept_id"].isin(concept_ids)]["score"].dropna()
        return f"{rows.mean():.3f} (n={len(rows)})" if len(rows) else "–"

    records, notes = [], []
    for method, group in scores.groupby("method", sort=True):
        kept = group.loc[group["steered"], "concept_id"].astype(int).tolist()
        dropped = group.loc[~group["steered"], "concept_id"].astype(int).tolist()
        records.append((method, f"{len(kept)} of {len(group)} steered", f"{group['output_score'].median():.4f}",
                        f"{int((group['output_score'] >= THRESHOLD).sum())} of {len(group)}",
                        steering_on(method, kept)))
        if dropped:
            notes.append(f"{method} steers {len(kept)} of {len(group)} concepts (output score above its threshold); "
                         f"its steering row averages over those {len(kept)} only, the {len(dropped)} others were not "
                         "generated (section \"SAE feature selection\").")
            for label, ids in (("kept", kept), ("dropped", dropped)):
                records.append((f"sae on {method}'s {label} concepts", str(len(ids)), "", "", steering_on("sae", ids)))
    columns = ["Method", "Concepts", "Median output score", f"Output score ≥ {THRESHOLD}", "Steering (these concepts)"]
    return pd.DataFrame.from_records(records, columns=columns), notes


_HELD_OUT_NOTE = ("A method trained on some concepts only (HyperSteer's held_out_concepts): its mean steering score "
                  "(after factor selection) on the concepts it was trained on and on those it never saw.")


def run_held_out(dictionaries_dir: Path) -> dict[str, list[int]]:
    """Method → held-out concept ids, from the run's results that record some (HyperSteer hypernetworks)."""
    held: dict[str, list[int]] = {}
    for path in sorted(Path(dictionaries_dir).glob("*/config.json")) if Path(dictionaries_dir).is_dir() else []:
        record = json.loads(path.read_text())
        if record.get("held_out_concepts"):
            held[record["method"]] = [int(c["concept_id"]) for c in record["held_out_concepts"]]
    return held


def held_out_table(selected: pd.DataFrame, held_out: dict[str, list[int]]) -> pd.DataFrame:
    """Per method with held-out concepts: mean steering score on its seen and on its held-out concepts."""
    records = []
    for method, ids in held_out.items():
        rows = selected[selected["method"] == method]
        for label, part in (("seen", rows[~rows["concept_id"].isin(ids)]), ("held out", rows[rows["concept_id"].isin(ids)])):
            scores = part["score"].dropna()
            records.append((method, label, len(scores), f"{scores.mean():.3f}" if len(scores) else "–"))
    return pd.DataFrame.from_records(records, columns=["Method", "Concepts", "n", "Steering score"])


_SUPPRESSION_NOTE = ("Concept-blended instructions (they invite the concept); methods steer with −factor, defence "
                     "prompts sit in the system turn or before / after the user's text. Score: harmonic mean of "
                     "(2 − concept, instruction, fluency), held-out at the factor chosen on the selection half; "
                     "lexical concept %: lower is better here.")
_ATTACK_NOTE = ("The same suppression rows with many-shot examples that bring the concept in (n pairs) or an overwrite "
                "text (before / after the question); each method at the factor chosen without attack.")
_RULES_NOTE = ("Rule concepts whose rule a program can check (axeval.rules): the checker's score (0–2) beside the "
               "judge's rule-following rating on the same generations, their rank correlation and how often they "
               "agree on followed / not followed: an exact test of the judge.")
_FLUENCY_NOTE = ("Spearman rank correlation between each generation's perplexity under the unsteered model and the "
                 "judge's fluency rating (0–2), over every judged generation that has both (all factors, both "
                 "halves). Lower perplexity should go with higher fluency, so a negative rho is agreement: a judge "
                 "that tracks fluency gives a clearly negative one. Per method and over all generations (–: "
                 "undefined, fewer than 3 generations or constant values).")


def perplexity_vs_fluency(scored: pd.DataFrame) -> pd.DataFrame | None:
    """Per method and overall: Spearman's rho between perplexity and the fluency rating (None without perplexity)."""
    if "perplexity" not in scored:
        return None
    # NaN perplexity (an empty generation) or rating (a parse failure): the pair is left out; ±inf has a rank
    both = scored.dropna(subset=["perplexity", "fluency_rating"])
    groups = [(str(method), rows) for method, rows in both.groupby("method", sort=True)] + [("all", both)]
    records = []
    for method, rows in groups:
        records.append({"method": method, "n": len(rows),
                        "spearman_rho": spearman(rows["perplexity"], rows["fluency_rating"]),
                        "mean_fluency": float(rows["fluency_rating"].mean()) if len(rows) else math.nan,
                        "median_perplexity": float(rows["perplexity"].median()) if len(rows) else math.nan})
    return pd.DataFrame.from_records(records)


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rho of paired values (ties averaged, as scipy.stats.spearmanr); NaN where it is undefined: fewer
    than 3 pairs, or either side constant (a zero variance of ranks)."""
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return math.nan
    return float(a.rank().corr(b.rank()))


def render_markdown(report: Report, title: str, plots: dict[str, Path], out: Path) -> str:
    """The report as markdown (`hub_cards/report.md`), the plots linked relative to `out`."""
    return render_card("report.md", **_page(report, title), table=_markdown_table,
                       plots=[(plot_title(name), path.relative_to(out).as_posix()) for name, path in plots.items()])


def render_html(report: Report, title: str, plots: dict[str, Path]) -> str:
    """One self-contained page (`hub_cards/report.html`): the markdown's sections, the plots as inline PNGs."""
    return render_card("report.html", **_page(report, title),
                       table=lambda frame: frame.to_html(index=False, escape=True, border=0, classes="results"),
                       plots=[(plot_title(name), base64.b64encode(path.read_bytes()).decode("ascii"))
                              for name, path in plots.items()])


def _page(report: Report, title: str) -> dict[str, Any]:
    """What both report templates show: the title, the intro line, the caveats and the sections."""
    return {"title": title, "intro": _INTRO, "caveats": report.caveats(), "sections": report_sections(report)}


_AGREEMENT_NOTE = ("Judge vs people (axbench curate): quadratic-weighted Cohen's kappa, Spearman rho, exact "
                   "agreement and mean |difference| per criterion and for the harmonic-mean score (kappa and exact "
                   "on the score rounded to 0/1/2); inter-annotator kappa is the mean over annotator pairs on "
                   "shared records. NaN: undefined (constant ratings, too few items).")


def _agreement(report: Report, folder: Path, plot: Path) -> Path:
    """Judge–human agreement of one labels folder: a table in the report and the confusion-matrix plot."""
    from axeval.curation.agreement import judge_human_agreement
    from axeval.curation.labels import plot_confusion, read_labels

    result = judge_human_agreement(read_labels(folder))
    report.agreement[folder.name] = result.table()
    return plot_confusion(result, plot)


@dataclass(frozen=True)
class BenchmarkData:
    """The benchmark data a run used, as `.eval_results` name it: Hub dataset repo, commit, config."""

    dataset_id: str
    revision: str | None = None  # the dataset commit (None: not known, e.g. a repo id given by hand)
    config: str | None = None  # the model/layer config, whose task ids the results name


def run_benchmark_data(run_dir: str | Path, dataset_id: str | None = None) -> BenchmarkData | None:
    """What data the run in `run_dir` used: its dataset directory (from the run's config.yaml) knows the Hub repo
    and commit it was pulled from; `dataset_id` names the repo by hand (then the commit is unknown unless the
    directory was pulled from that same repo). None when neither says which Hub dataset it is."""
    run = RunDirectory(run_dir)
    resolved = run.read_config()
    directory = Path((resolved.get("run") or {}).get("dataset_dir") or run.data_dir)
    config = (resolved.get("data") or {}).get("dataset_config")
    if config is None and directory.is_dir():
        configs = list_configs(directory)
        config = configs[0] if len(configs) == 1 else None
    origin = read_hub_origin(directory) if directory.is_dir() else None
    if dataset_id is None and origin is None:
        return None
    same_repo = origin is not None and dataset_id in (None, origin.repo_id)
    return BenchmarkData(dataset_id or origin.repo_id, origin.commit if same_repo else None, config)


def write_eval_results(report: Report, folder: Path, data: BenchmarkData) -> dict[str, Path]:
    """One `.eval_results` YAML per method, in the format the Hub reads (`huggingface_hub.EvalResultEntry`): the
    dataset repo and commit the run used, the task of its config (`axdata.benchmark.task_id`), the value, and in
    the notes its interval, the number of concepts and (steering, suppression) the judge model, temperature and
    templates."""
    entries: dict[str, list[EvalResultEntry]] = {}

    def entry(method: str, kind: str, value: float, notes: str) -> None:
        entries.setdefault(method, []).append(EvalResultEntry(
            dataset_id=data.dataset_id, dataset_revision=data.revision,
            task_id=task_id(kind, data.config) if data.config else kind, value=round(float(value), 4), notes=notes))

    if report.detection_summary is not None:
        for _, row in report.detection_summary.dropna(subset=["auroc_mean"]).iterrows():
            entry(row["method"], "concept_detection", row["auroc_mean"],
                  f"mean AUROC over {int(row['auroc_n'])} concepts, 95% CI "
                  f"[{row['auroc_ci_low']:.4f}, {row['auroc_ci_high']:.4f}]")
    judge = report.judge or {}
    judged_by = (f"; judge {', '.join(judge['judge_model'])}, temperature "
                 f"{', '.join(map(str, judge['judge_temperature']))}, templates "
                 f"{', '.join(judge['judge_template_hash'])}") if judge else ""
    # the judged tasks: steering, and suppression without attack (the task `eval.yaml` registers; attack scores
    # have no task and stay in leaderboard.json and the leaderboard dataset)
    for kind, summary in (("steering", report.steering_summary), ("suppression", report.suppression_summary)):
        for _, row in ([] if summary is None else summary.dropna(subset=["score_mean"]).iterrows()):
            entry(row["method"], kind, row["score_mean"],
                  f"mean held-out {kind} score (0-2) over {int(row['score_n'])} concepts, 95% CI "
                  f"[{row['score_ci_low']:.4f}, {row['score_ci_high']:.4f}]{judged_by}")
    paths = {}
    for method, method_entries in entries.items():
        path = folder / f"{_slug(method)}.yaml"
        atomic_write_text(path, yaml.safe_dump(eval_result_entries_to_yaml(method_entries), sort_keys=False,
                                               allow_unicode=True))
        paths[method] = path
    return paths


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "method"


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _plot_roc(rows: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    figure = Figure(figsize=(5.5, 5))
    axes = figure.subplots()
    for _, row in summary.dropna(subset=["auroc_mean"]).sort_values("auroc_mean", ascending=False).iterrows():
        fpr, tpr = detection.mean_roc_curve(rows, row["method"])
        axes.plot(fpr, tpr, label=f"{row['method']} (AUROC {row['auroc_mean']:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    axes.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01),
             title="Concept detection: ROC (mean over concepts)")
    axes.legend(loc="lower right", fontsize="small")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def _plot_factor_curves(curves: pd.DataFrame, path: Path) -> Path:
    panels = [("score", "Steering score (harmonic mean)"), *((c, c.replace("_", " ").capitalize())
                                                            for c in steering.RATING_COLUMNS)]
    figure = Figure(figsize=(4.2 * len(panels), 4))
    axes = figure.subplots(1, len(panels), sharey=True)
    colours = {method: f"C{i}" for i, method in enumerate(sorted(curves["method"].unique()))}
    for ax, (column, label) in zip(axes, panels):
        for (method, half), group in curves.groupby(["method", "half"]):
            style = "-" if half == steering.HELDOUT else "--"
            if group["factor"].isna().all():  # factor-free: one level, drawn across the axis
                ax.axhline(group[column].iloc[0], color=colours[method], linestyle=style, alpha=0.8,
                           label=f"{method} ({half})")
            else:
                group = group.sort_values("factor")
                ax.plot(group["factor"], group[column], style, marker="o", markersize=3,
                        color=colours[method], label=f"{method} ({half})")
        ax.set(xlabel="Steering factor", title=label, ylim=(0, 2.05))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Mean over concepts (0–2)")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    figure.suptitle("Steering: score vs factor (solid: held-out, dashed: selection)")
    return _save(figure, path)


def attack_label(attack: str, strength: Any) -> str:
    """"none" → "no attack"; ("many-shot", 8) → "many-shot-8"; overwrite-prefix as it is."""
    if attack == steering.NO_ATTACK:
        return "no attack"
    return attack if strength is None or pd.isna(strength) else f"{attack}-{int(strength)}"


def attack_frames(attacks: pd.DataFrame | None) -> list[tuple[str, pd.DataFrame]]:
    """Per attack, its per-method summary under the prefix `attack_<label>_` (for `Report.by_method`)."""
    if attacks is None:
        return []
    frames = []
    for (attack, strength), frame in attacks.groupby(["attack", "attack_n"], dropna=False, sort=False):
        if attack != steering.NO_ATTACK:
            frames.append((f"attack_{attack_label(attack, strength)}_", frame.drop(columns=["attack", "attack_n"])))
    return frames


def rule_table(scored: pd.DataFrame) -> pd.DataFrame | None:
    """Rule concepts, per method and over all: the checker's mean score (0–2, ×2 of its 0–1), the judge's concept
    rating (rule following, 0–2) on the same generations, their Spearman rho and how often they agree on whether
    the rule was followed (checker ≥ 0.5 vs rating ≥ 1). None without rule concepts that have a checker."""
    if "rule_score" not in scored:
        return None
    both = scored.dropna(subset=["rule_score", "concept_rating"])
    if both.empty:
        return None
    groups = [(str(method), rows) for method, rows in both.groupby("method", sort=True)] + [("all", both)]
    records = []
    for method, rows in groups:
        checker, judge = rows["rule_score"] * 2, rows["concept_rating"]
        records.append({"method": method, "n": len(rows), "checker_mean": float(checker.mean()),
                        "judge_mean": float(judge.mean()), "spearman_rho": spearman(checker, judge),
                        "agreement": float(((rows["rule_score"] >= 0.5) == (judge >= 1)).mean())})
    return pd.DataFrame.from_records(records)


def attack_table(attacks: pd.DataFrame) -> pd.DataFrame:
    """Methods × attacks: the mean suppression score with its interval (higher: the concept stayed out)."""
    table = attacks.assign(attack=[attack_label(a, n) for a, n in zip(attacks["attack"], attacks["attack_n"])],
                           cell=[_ci(row, "score_") for _, row in attacks.iterrows()])
    order = list(dict.fromkeys(table["attack"]))
    wide = table.pivot(index="method", columns="attack", values="cell").reindex(columns=order).fillna("–")
    return wide.reset_index().rename(columns={"method": "Method"})


def _plot_attacks(attacks: pd.DataFrame, path: Path) -> Path:
    """Suppression score per method against the attack, many-shot n increasing then the overwrite variants."""
    labels = list(dict.fromkeys(attack_label(a, n) for a, n in zip(attacks["attack"], attacks["attack_n"])))
    figure = Figure(figsize=(max(6.0, 1.1 * len(labels) + 3), 4))
    ax = figure.subplots()
    for index, (method, group) in enumerate(attacks.groupby("method", sort=True)):
        by_label = {attack_label(a, n): v for a, n, v in zip(group["attack"], group["attack_n"], group["score_mean"])}
        ax.plot(range(len(labels)), [by_label.get(label, math.nan) for label in labels], "-o", markersize=4,
                color=f"C{index}", label=method)
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set(ylabel="Suppression score (0–2, higher: concept kept out)", ylim=(0, 2.05),
           title="Suppression under attack (held-out, factor chosen without attack)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    return _save(figure, path)
