"""The evaluator's report: ``report.json`` (machine), ``report.md`` (a table a person reads) and
``report.png`` (gains with 95% intervals; AIS of each table against each builder's LIS ceiling).

All three are written atomically, and together: everything is rendered in memory first (a
report that cannot be written changes nothing), the ``.md`` and ``.png`` are written, and
``report.json`` last, as the manifest of the three: its ``files`` field names the ``.md`` and
``.png`` with their sha256. So a ``report.json`` never sits beside the files of another run
unnoticed: a run killed between the writes leaves the previous JSON, whose hashes no longer
match (:func:`report_is_whole` says so). The JSON layout is documented in the README ("report.json").
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from lis.atomic import json_text, write_bytes


def write_report(report: dict, json_path: str | Path) -> dict[str, Path]:
    """Write ``report`` as JSON plus ``.md`` and ``.png`` beside it, JSON last; return the three paths."""
    json_path = Path(json_path)
    paths = {"json": json_path, "md": json_path.with_suffix(".md"), "png": json_path.with_suffix(".png")}
    contents = {"md": render_markdown(report).encode("utf-8"), "png": render_png(report)}
    files = {kind: {"name": paths[kind].name, "sha256": hashlib.sha256(data).hexdigest()}
             for kind, data in contents.items()}
    text = json_text({**report, "files": files})  # fails here, before any write, on a bad report
    for kind in ("md", "png"):
        write_bytes(paths[kind], contents[kind])
    write_bytes(paths["json"], text.encode("utf-8"))
    return paths


def report_is_whole(json_path: str | Path) -> bool:
    """True when the ``.md`` and ``.png`` beside ``json_path`` are the ones its ``files`` field names."""
    json_path = Path(json_path)
    files = json.loads(json_path.read_text()).get("files") or {}
    for entry in files.values():
        path = json_path.with_name(entry["name"])
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            return False
    return bool(files)


def _fmt_gain(scores: dict, key: str) -> str:
    lo, hi = scores[f"{key}_ci"]
    return f"{scores[key]:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def render_markdown(report: dict) -> str:
    base = report["base"]
    lines = ["# LIS report", ""]
    windows = report.get("windows", {})
    if windows:
        lines += ["| window | from | to | impressions | positives |", "|---|---|---|---|---|"]
        for name, info in windows.get("windows", windows).items():
            if isinstance(info, dict) and "rows" in info:
                lines.append(f"| {name} | {info.get('from', '')} | {info.get('to', '')} | {info['rows']} | {info.get('positives', '')} |")
        lines.append("")
    lines += [f"Base ranker ({base.get('source', 'builtin')}): AUC {base['auc']:.4f}, GAUC {base['gauc']:.4f} "
              "on the probe-test half of the evaluation window." + _modes(report.get("config") or {}), ""]
    if report.get("lis"):
        lines += ["## LIS: the ceiling of each preference-data builder", "",
                  "| builder | pairs | AUC gain [95% CI] | GAUC gain [95% CI] |", "|---|---|---|---|"]
        for name, scores in report["lis"].items():
            lines.append(f"| {name} | {scores['n_pairs']} | {_fmt_gain(scores, 'auc_gain')} | {_fmt_gain(scores, 'gauc_gain')} |")
        lines.append("")
    if report.get("ais"):
        lines += ["## AIS: what each embedding table delivers, against its own ceiling", "",
                  "| table | coverage | AUC gain [95% CI] | GAUC gain [95% CI] | ceiling (LIS of) | eta |",
                  "|---|---|---|---|---|---|"]
        for name, scores in report["ais"].items():
            ceiling = scores.get("ceiling") or {}
            lines.append(f"| {name} | {scores['coverage']:.1%} | {_fmt_gain(scores, 'auc_gain')} | "
                         f"{_fmt_gain(scores, 'gauc_gain')} | {_fmt_ceiling(ceiling)} | {_fmt_eta(ceiling)} |")
        lines += ["", "The ceiling is the builder named in the table's manifest (the pairs it was trained on), "
                  "else the best builder with headroom; the eta of every table against every builder is in "
                  "`report.json` (`efficiency`).", ""]
    lines += _segment_lines(report.get("segments") or {})
    verdict = report.get("verdict")
    if verdict:
        lines += [f"**Verdict: `{verdict['code']}`.** {verdict['advice']}", ""]
    return "\n".join(lines)


def _segment_lines(segments: dict) -> list[str]:
    """One row per segment, one column per table: AUC gain [95% CI] (or why it is undefined)."""
    tables = [name for name, rows in segments.items() if rows]
    if not tables:
        return []
    names = list(dict.fromkeys(seg for t in tables for seg in segments[t]))
    lines = ["## AIS by segment (AUC gain [95% CI]; probe-test impressions)", "",
             "| segment | impressions |" + "".join(f" {t} |" for t in tables), "|---|---|" + "---|" * len(tables)]
    for seg in names:
        cells = [segments[t].get(seg, {}) for t in tables]
        n = next((c["n"] for c in cells if "n" in c), "")
        text = "".join(f" {_fmt_gain(c, 'auc_gain') if c.get('auc_gain') is not None else c.get('note', '')} |"
                       for c in cells)
        lines.append(f"| {seg} | {n} |{text}")
    lines.append("")
    return lines


def _modes(config: dict) -> str:
    if "mode" not in config:
        return ""
    how = "a probe on [base_logit, controls, features]" if config["mode"] == "probe" else \
        "the ranker retrained with the features (full mode)"
    return f" Gains: {how}; LIS oracle: {config.get('lis_mode', 'embedding')} mode."


def _fmt_ceiling(ceiling: dict) -> str:
    if not ceiling.get("builder"):
        return "none (no builder with headroom)"
    lis = ceiling.get("lis") or {}
    how = "manifest" if ceiling.get("source") == "manifest" else "best builder; the manifest names none"
    gain = f" {lis['auc_gain']:+.4f}" if lis else ""
    return f"{ceiling['builder']}{gain} ({how})"


def _fmt_eta(ceiling: dict) -> str:
    relation = ceiling.get("relation")
    if relation == "exceeds":
        return "exceeds the ceiling"
    if relation != "within" or ceiling.get("eta") is None:
        return "n/a (LIS interval includes 0)"
    lo, hi = ceiling.get("eta_ci") or (None, None)
    return f"{ceiling['eta']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None else "")


def plot_report(report: dict, png_path: str | Path) -> None:
    write_bytes(png_path, render_png(report))


def render_png(report: dict) -> bytes:
    """The report's plot as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lis, ais = report.get("lis", {}), report.get("ais", {})
    # A second panel only when there is AIS to compare with the ceilings.
    panels = 2 if ais else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    _bar_with_ci(axes[0][0], lis, "LIS by builder (AUC gain, 95% CI)", "tab:blue")
    if ais:
        ax = axes[0][1]
        _bar_with_ci(ax, ais, "AIS by table vs LIS ceilings", "tab:orange")
        for index, (name, scores) in enumerate(lis.items()):
            ax.axhline(scores["auc_gain"], linestyle="--", color=f"C{index}", linewidth=1, label=f"LIS {name}")
        if lis:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _bar_with_ci(ax, scores: dict, title: str, color: str) -> None:
    names = list(scores)
    ax.set_title(title, fontsize=10)
    ax.axhline(0.0, color="black", linewidth=0.8)
    if not names:
        ax.text(0.5, 0.5, "nothing scored", ha="center", va="center", transform=ax.transAxes)
        return
    gains = [scores[n]["auc_gain"] for n in names]
    lower = [g - scores[n]["auc_gain_ci"][0] for g, n in zip(gains, names)]
    upper = [scores[n]["auc_gain_ci"][1] - g for g, n in zip(gains, names)]
    ax.bar(range(len(names)), gains, yerr=[lower, upper], color=color, capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("AUC gain")
