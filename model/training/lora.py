"""A LoRA adapter on the towers being trained, as a regulariser, merged back into plain weights before saving.

Fine-tuning every weight on a few hundred judged queries memorises them (the trained documents become attractors
for unseen queries). A low-rank update (Hu et al. 2022, "LoRA") caps how far the tower can move, the same aim as
WiSE-FT's merge, by a different route. Only the adapter trains; at the end it is merged (``W + B·A·scale``) and the
model saved without it, so every later stage (evaluation, ONNX export, publication) sees an ordinary model.

The adapter is injected with peft's ``inject_adapter_in_model`` on each tower's transformers model directly:
sentence-transformers' ``add_adapter`` goes through transformers' PEFT integration, which asks for a newer peft
than the package index holds.
"""

from __future__ import annotations

import re
from pathlib import Path

from sentence_transformers import SentenceTransformer

from denseflow.model.encoder import role_transformers

# The attention projections LoRA's paper adapts, under BERT's and DistilBERT's names.
TARGET_MODULES = ["query", "value", "q_lin", "v_lin"]
_ADAPTER_KEY = re.compile(r"\.lora_(A|B|dropout|embedding_A|embedding_B|magnitude_vector)\.")


def add_lora(model: SentenceTransformer, towers: str, rank: int) -> SentenceTransformer:
    """Inject a rank-``rank`` LoRA adapter into the trained towers' transformers; their own weights freeze."""
    from peft import LoraConfig, inject_adapter_in_model

    roles = ["query"] if towers == "query_only" else ["query", "document"]
    seen: set[int] = set()
    for role in roles:
        for transformer in role_transformers(model, role):
            if id(transformer) in seen:  # siamese: one transformer serves both roles
                continue
            seen.add(id(transformer))
            config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=TARGET_MODULES)
            inject_adapter_in_model(config, transformer.auto_model)  # in place
    return model


def merge_lora(model: SentenceTransformer, plain: SentenceTransformer) -> SentenceTransformer:
    """``plain`` (the same architecture without adapters) holding ``model``'s weights with every adapter merged."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    state = {
        key.replace(".base_layer.", "."): value
        for key, value in model.state_dict().items()
        if not _ADAPTER_KEY.search(key)
    }
    plain.load_state_dict(state)
    return plain


def load_adapted_checkpoint(model: SentenceTransformer, checkpoint: str | Path) -> None:
    """Load a checkpoint of an adapted ``model`` into it, weights and adapters.

    sentence-transformers reloads a checkpoint by building its modules afresh from the folder, which gives plain
    transformers without the adapters' keys; an adapted tower's own weights file is read back into it instead.
    """
    from safetensors.torch import load_file

    for folder in sorted(Path(checkpoint).glob("*Transformer")):
        role = folder.name.split("_", 1)[0]
        transformers = (
            role_transformers(model, role) if role in ("query", "document") else role_transformers(model, "query")
        )
        state = load_file(str(folder / "model.safetensors"))
        transformers[0].auto_model.load_state_dict(state)
