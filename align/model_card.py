"""The model card (``README.md``) of a published adapter: Hub metadata plus a page a person reads.

``render_card(run, report)`` takes the training run's ``run.json`` (as a dict) and its
``lis_report.json`` (layout of :mod:`lis.report`) and returns the whole card. The YAML front
matter is built with ``huggingface_hub.ModelCardData`` so ``model-index`` follows the Hub's
schema: one result whose metrics are AIS (AUC gain of the best checkpoint), LIS (AUC gain of
the training builder's oracle) and eta = AIS / LIS.

Which AIS entry is "the best checkpoint" (:func:`best_scores`): ``run['best_table']`` if given,
else ``step_{best_step}``, ``best``, or the only entry of ``report['ais']``; failing those, the
``eval_``-prefixed numbers in ``run['best_metric']``.

Limits: numbers are AUC gains (GAUC gains appear in the body only); eta is omitted from the
metadata when the LIS interval includes 0 (the report then holds ``None``); local paths in
``run.json`` are shown by their last component only, so a card never reveals a home folder.
"""
from __future__ import annotations

import re
from pathlib import Path

from lis.errors import DataError

TAGS = ["lis-align", "recommendation", "item-embedding", "lora", "peft", "vision-language"]
TASK = {"type": "feature-extraction", "name": "Item embedding for recommendation"}
# A Hub repo id: "name" or "namespace/name" (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def hub_base_model(run: dict) -> str | None:
    """The base model's Hub id for the metadata, or None when the run used a local folder only.

    ``run['base_model_id']`` wins (the trainer may know the Hub id of a local copy); otherwise
    ``run['base_model']`` when it looks like a Hub id and is not an existing local path.
    """
    if run.get("base_model_id"):
        return str(run["base_model_id"])
    base = str(run.get("base_model") or "")
    if base and _HUB_ID.match(base) and not Path(base).exists() and not base.startswith("."):
        return base
    return None


def best_scores(run: dict, report: dict) -> dict:
    """AIS / LIS / eta of the best checkpoint against the training builder, with intervals when known.

    Returns ``{"builder", "table", "ais", "ais_ci", "ais_gauc", "ais_gauc_ci", "lis", "lis_ci", "eta",
    "relation"}`` (relation: ``within`` / ``exceeds`` / ``no_ceiling`` of the table's own ceiling in
    the report, None for a report without one); a value the run did not record is None.
    """
    builder = (run.get("data") or {}).get("builder") or (run.get("recipe") or {}).get("lis", {}).get("builder")
    lis = report.get("lis") or {}
    if builder not in lis and len(lis) == 1:
        builder = next(iter(lis))
    ais_tables = report.get("ais") or {}
    table = _best_table(run, ais_tables)
    ais = ais_tables.get(table, {})
    best_metric = run.get("best_metric") or {}
    ceiling = lis.get(builder, {})
    # eta against the table's own ceiling (the builder its manifest names), as the report computed
    # it; a table that exceeds its ceiling has no eta, only that relation.
    own = ais.get("ceiling") or {}
    relation = own.get("relation")
    eta = own.get("eta") if relation == "within" else None
    if not own:
        eta = best_metric.get("eval_lis_efficiency")
    scores = {
        "builder": builder, "table": table,
        "ais": ais.get("auc_gain", best_metric.get("eval_ais_auc")), "ais_ci": ais.get("auc_gain_ci"),
        "ais_gauc": ais.get("gauc_gain", best_metric.get("eval_ais_gauc")), "ais_gauc_ci": ais.get("gauc_gain_ci"),
        "lis": ceiling.get("auc_gain", best_metric.get("eval_lis_auc")), "lis_ci": ceiling.get("auc_gain_ci"),
        "eta": eta, "relation": relation,
    }
    if scores["ais"] is None:
        raise DataError("lis_report.json: no AIS of the best checkpoint: field 'ais' has no entry "
                        f"{table or 'step_' + str(run.get('best_step'))!r} and run.json's best_metric has no 'eval_ais_auc'.")
    return scores


def _eta_text(scores: dict) -> str:
    if scores["relation"] == "exceeds":
        return ("n/a: AIS exceeds the LIS ceiling beyond both intervals (the embeddings carry information "
                "this builder's pairs lack)")
    return "n/a (the LIS interval includes 0)" if scores["eta"] is None else f"{scores['eta']:.2f}"


def _best_table(run: dict, tables: dict) -> str | None:
    for name in (run.get("best_table"), f"step_{run.get('best_step')}", "best"):
        if name in tables:
            return name
    return next(iter(tables)) if len(tables) == 1 else None


def render_card(run: dict, report: dict, repo_id: str | None = None, head_config: dict | None = None,
                batcher: dict | None = None) -> str:
    """The full ``README.md``: YAML metadata, how to load and embed, data, scores, limitations.

    ``repo_id`` fills the loading snippet (a placeholder otherwise); ``head_config`` (the saved
    ``projection_head.json``) and ``batcher`` (the batcher settings of ``lis_align.json``:
    ``max_text_tokens``, ``image_size``, ``prompt``, ``missing_image``) make the snippet
    reproduce the run's embeddings exactly.
    """
    from huggingface_hub import EvalResult, ModelCardData

    scores = best_scores(run, report)
    base_id = hub_base_model(run)
    name = repo_id.split("/")[-1] if repo_id else "lis-align-item-embedder"
    dataset_name = _dataset_name(run)
    metrics = [("ais_auc_gain", scores["ais"], "AIS (AUC gain of the best checkpoint)"),
               ("lis_auc_gain", scores["lis"], f"LIS of builder {scores['builder']} (AUC gain ceiling)"),
               ("lis_efficiency", scores["eta"], "eta = AIS / LIS (efficiency)")]
    results = [EvalResult(task_type=TASK["type"], task_name=TASK["name"], dataset_type="lis-align-log",
                          dataset_name=dataset_name, metric_type=kind, metric_value=round(float(value), 6),
                          metric_name=label)
               for kind, value, label in metrics if value is not None]
    data = ModelCardData(library_name="peft", base_model=base_id, tags=list(TAGS), pipeline_tag="feature-extraction",
                         model_name=name, eval_results=results)
    body = "\n".join([
        f"# {name}", "",
        "A LoRA adapter and projection head that turn the vision-language model "
        f"`{base_id or _shown(run.get('base_model'))}` into an item-embedding model for recommender systems: one "
        "L2-normalised vector per item (image + text). Trained and selected with "
        "[lis-align](https://arxiv.org/abs/2508.04963) by the Leakage Impact Score (LIS).", "",
        *_usage(repo_id, run, head_config or {}, batcher or {}),
        *_data_section(run),
        *_scores_section(run, report, scores),
        *_limitations(base_id, bool((run.get("data") or {}).get("simulated"))),
    ])
    return f"---\n{data.to_yaml()}\n---\n\n{body}\n"


def _shown(value) -> str:
    """A path shown by its last component (never a home folder); a Hub id as is."""
    if value is None:
        return "unknown"
    text = str(value)
    return Path(text).name if (Path(text).is_absolute() or Path(text).exists()) else text


def _dataset_name(run: dict) -> str:
    data = run.get("data") or {}
    if data.get("simulated"):
        return "simulated platform (lis-align synth), evaluation window"
    return f"{_shown(data.get('data_dir', 'training log'))} (evaluation window)"


def _usage(repo_id, run, head: dict, batcher: dict) -> list[str]:
    base = hub_base_model(run) or _shown(run.get("base_model"))
    code = f'''from huggingface_hub import snapshot_download
from peft import PeftModel

from align.collate import ItemBatcher
from align.embedder import ItemEmbedder
from align.models.loading import load_processor, load_vlm

path = snapshot_download("{repo_id or 'REPO_ID'}")  # adapter, projection head, processor
base, _, family = load_vlm("{base}")  # transformers Auto* classes; the base model's processor is not used
model = PeftModel.from_pretrained(base, path).eval()
processor = load_processor(path, family)  # the processor the adapter was trained with
embedder = ItemEmbedder(model, family, dim={head.get('dim', 128)}, pooling="{head.get('pooling', 'last')}",
                        center={head.get('center', True)}, normalize={head.get('normalize', True)}).load_head(path).eval()
batcher = ItemBatcher(processor, family, max_text_tokens={batcher.get('max_text_tokens', 64)}, image_size={batcher.get('image_size', 64)}{_custom_batcher_args(batcher)})
items = [{{"item_id": "sku-1", "text": "red leather shoes for running", "image": None}}]  # image: PIL, path, bytes or None
vectors = embedder.embed_items(items, batcher)  # (n, {head.get('dim', 128)}) float32 unit vectors
'''
    return ["## How to embed items", "",
            "The adapter is plain PEFT and loads with `PeftModel.from_pretrained` anywhere; the pooling and the "
            "projection head come from lis-align's `align` package.", "",
            "```python", code.rstrip(), "```", "",
            "Use the vectors as item features of your ranker (e.g. cosine similarity between a candidate and "
            "the user's recently engaged items), which is exactly how AIS below was measured.", ""]


def _custom_batcher_args(batcher: dict) -> str:
    """``, prompt=..., missing_image=...`` for the settings that differ from ItemBatcher's defaults."""
    from align.models.families import DEFAULT_PROMPT

    defaults = {"prompt": DEFAULT_PROMPT, "missing_image": "blank"}
    return "".join(f", {name}={batcher[name]!r}" for name, default in defaults.items()
                   if batcher.get(name, default) != default)


def _data_section(run: dict) -> list[str]:
    data = run.get("data") or {}
    lines = ["## Training data", "",
             f"- catalogue: {data.get('n_items', '?')} items; data: `{_shown(data.get('data_dir'))}`",
             f"- preference pairs: {data.get('n_pairs', '?')} built by `{data.get('builder', '?')}` on the fit window"]
    windows = data.get("windows") or {}
    for wname, info in (windows.get("windows", windows) if isinstance(windows, dict) else {}).items():
        if isinstance(info, dict):
            span = f"{info.get('from', '?')} to {info.get('to', '?')}" if "from" in info or "to" in info else ""
            rows = f", {info['rows']} impressions" if "rows" in info else ""
            lines.append(f"- window `{wname}`: {span}{rows}")
        else:
            lines.append(f"- {wname}: {info}")
    return lines + [""]


def _fmt(value, ci=None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:+.4f}"
    return f"{text} [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else text


def _scores_section(run: dict, report: dict, scores: dict) -> list[str]:
    lines = ["## Scores", "",
             f"Best checkpoint: step {run.get('best_step', '?')}. Gains are over the ranker without the "
             "embedding, on the probe-test half of the evaluation window, with paired-bootstrap 95% intervals.", "",
             f"- **AIS** (AUC gain): {_fmt(scores['ais'], scores['ais_ci'])}; GAUC gain "
             f"{_fmt(scores['ais_gauc'], scores['ais_gauc_ci'])}",
             f"- **LIS** of `{scores['builder']}` (the ceiling of the training data): {_fmt(scores['lis'], scores['lis_ci'])}",
             "- **eta** = AIS / LIS: " + _eta_text(scores), ""]
    lis = report.get("lis") or {}
    if lis:
        lines += ["| builder | pairs | LIS AUC gain [95% CI] | LIS GAUC gain [95% CI] |", "|---|---|---|---|"]
        for builder, entry in lis.items():
            lines.append(f"| {builder} | {entry.get('n_pairs', '')} | {_fmt(entry.get('auc_gain'), entry.get('auc_gain_ci'))} "
                         f"| {_fmt(entry.get('gauc_gain'), entry.get('gauc_gain_ci'))} |")
        lines.append("")
    verdict = report.get("verdict")
    if verdict:
        lines += [f"Verdict: `{verdict.get('code')}`. {verdict.get('advice', '')}", ""]
    lines += _matryoshka_lines(run)
    lines += ["`lis_report.json` holds every number; `lis_curve.png` plots AIS and eta against the training step.", ""]
    return lines


def _matryoshka_lines(run: dict) -> list[str]:
    """The Matryoshka dimensions trained (``loss.matryoshka_dims``) and the AIS of each at the best step."""
    dims = ((run.get("recipe") or {}).get("loss") or {}).get("matryoshka_dims")
    if not dims:
        return []
    best = run.get("best_metric") or {}
    lines = ["Matryoshka dimensions: the first D coordinates, re-normalised, are an embedding of their own "
             f"(trained at D = {', '.join(str(d) for d in sorted(dims, reverse=True))}; "
             "`lis-align export --dim D` writes one).", "",
             "| dimension | AIS AUC gain [95% CI] |", "|---|---|"]
    for dim in sorted(dims, reverse=True):
        key = f"eval_ais_auc_d{dim}"
        ci = (best[key + "_lo"], best[key + "_hi"]) if best.get(key + "_lo") is not None else None
        lines.append(f"| {dim} | {_fmt(best.get(key), ci)} |")
    return lines + [""]


def _limitations(base_id, simulated: bool) -> list[str]:
    lines = ["## Limitations", "",
             "- LIS is a ceiling for *this* ranker, feature set and evaluation window: it bounds what alignment on "
             "this kind of preference data can add here, not in another system or period.",
             "- AIS and eta are measured with a logistic probe on similarity features, not by retraining the "
             "production ranker; the gain in a full retrain can differ.",
             ("- The training and evaluation data are **simulated** (`lis-align synth`): the scores show the "
              "pipeline works, they say nothing about real users." if simulated else
              "- The scores hold for the platform and period of the training log; other traffic can differ."),
             "- The embeddings depend on the prompt, image size and text length used at training time; the snippet "
             "above uses the same ones."]
    if base_id is None:
        lines.append("- The base model was a local folder, not a Hub model: `base_model` is absent from the "
                     "metadata and the snippet needs that folder.")
    return lines


def merged_section(subfolder: str) -> list[str]:
    """The card's section on the merged model in ``subfolder`` (``lis-align publish --merged``)."""
    code = f'''from huggingface_hub import snapshot_download

from align.embedder import ItemEmbedder
from align.export import load_export_model  # transformers only: the folder has no adapter

path = snapshot_download("REPO_ID") + "/{subfolder}"
embedder, batcher = load_export_model(path, path)  # merged weights, projection head, processor
'''
    return ["## Merged model (no peft)", "",
            f"`{subfolder}/` holds the base model with the adapter merged into its weights, as plain `transformers` "
            "safetensors (plus the projection head and processor), for serving engines that load no adapters. It "
            "was checked before upload to embed probe items like the adapter (cosine >= 0.999 each).", "",
            "```python", code.rstrip(), "```", ""]
