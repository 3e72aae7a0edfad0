"""A model card per registered version: sentence-transformers' own card plus what the pipeline knows.

sentence-transformers writes ``README.md`` into every saved model from its ``SentenceTransformerModelCardData``
(base model, loss and its arguments, training arguments, dataset size, widget examples). Before the trained
model is saved, :func:`describe_training_data` fills the fields only the pipeline knows (license of the base,
the dataset, the model's name). The pipeline's own section — data counts and fingerprint, negatives, recipe,
dev curve, every system's test figures, the gate's decision — is known only after evaluation and the gate; it
is appended by :func:`full_card` to the version's card in the registry (its description and a
``model_card.md`` artifact), never into the model folder, whose checksum keys cached embeddings and indexes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sentence_transformers import SentenceTransformer

from denseflow.model.evaluation.summary import SYSTEM_HEADER, choice_lines, gate_rows, outcome_lines, system_rows

# all-MiniLM-L6-v2 (the bundled base) is Apache-2.0; another base model keeps whatever its card says.
BUNDLED_BASE_LICENSE = "apache-2.0"


def describe_training_data(
    model: SentenceTransformer, dataset_name: str, dataset_fingerprint: str, bundled_base: bool
) -> None:
    """Fill the card fields sentence-transformers cannot know (kept on ``model.model_card_data``)."""
    card = model.model_card_data
    card.model_name = f"denseflow retriever fine-tuned on {dataset_name}"
    if bundled_base:
        card.license = BUNDLED_BASE_LICENSE
        card.language = ["en"]
    # Not card.train_datasets: sentence-transformers fills it from the training columns and its template needs them.
    card.tags = [*(card.tags or []), f"dataset-fingerprint:{dataset_fingerprint}"] if dataset_fingerprint else card.tags


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(r) + " |" for r in rows]]


def pipeline_section(summary: Mapping, training: Mapping, mining: Mapping[str, float], config: Mapping) -> str:
    """The card's denseflow section: data, negatives, recipe, dev curve, figures, decision (markdown)."""
    train, mine = config.get("train", {}), config.get("mining", {})
    lines = [
        "## denseflow: how this version was made and how it did",
        "",
        f"- **Data**: fingerprint `{summary['dataset_fingerprint']}`; dev split `{summary.get('dev_split')}` "
        f"({summary.get('dev_method')}); MLflow run `{summary['mlflow_run_id']}`.",
        f"- **Negatives**: {mine.get('candidates')} candidates, teacher `{mine.get('teacher')}`, selection "
        f"{mine.get('selection')} of ranks {mine.get('rank_start', 0) + 1}–{mine.get('rank_end')}, "
        f"{mine.get('num_negatives')} per pair; "
        + ", ".join(f"{key} {value:g}" for key, value in sorted(mining.items()))
        + ".",
        f"- **Recipe**: {train.get('loss')} loss, batch {train.get('batch_size')}, lr {train.get('learning_rate')}, "
        f"≤ {train.get('epochs')} epochs, {train.get('max_seq_length')} tokens, towers {train.get('towers')}, "
        f"pseudo-queries {train.get('pseudo_queries')}; {training.get('steps')} steps, best step "
        f"{training.get('best_step')}; WiSE-FT α {training.get('interpolation')} ({training.get('selection')}).",
    ]
    curve = training.get("dev_curve") or []
    if curve:
        lines.append(
            "- **Dev curve** (nDCG@10 on the candidate corpus, by step): "
            + ", ".join(f"{int(step)}: {value:.4f}" for step, value in curve)
        )
    alphas = training.get("interpolation_curve") or []
    if alphas:
        lines.append("- **α on dev**: " + ", ".join(f"{alpha:g}: {value:.4f}" for alpha, value in alphas))
    lines += ["", "### Test figures", "", *_table(SYSTEM_HEADER, system_rows(summary)), ""]
    lines += choice_lines(summary)
    rows = gate_rows(summary["promotion"])
    if rows:
        lines += ["", "### Promotion gate", "", *_table(("role", "version", "metric", "re-evaluated"), rows), ""]
    lines += outcome_lines(summary)
    return "\n".join(lines) + "\n"


def full_card(model_dir: Path, section: str) -> str:
    """The pipeline's section (what the version is, its figures, the gate), then the model folder's
    sentence-transformers card when there is one, without its YAML front matter (the folder's README keeps it):
    a registry that shows only the head of a long card shows what an operator needs."""
    readme = Path(model_dir) / "README.md"
    base = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if base.startswith("---\n") and "\n---\n" in base[4:]:
        base = base[4:].split("\n---\n", 1)[1]
    return section.rstrip() + ("\n\n" + base.strip() + "\n" if base.strip() else "\n")
