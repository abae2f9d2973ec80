"""BERT encoders over tokens (tabular field tokens or word pieces) with a ``[CLS]``-pooled classifier.

TGeo-KD (Table 3) distils a 12-layer BERT into a 4-layer BERT on tabular tasks (HIL attack detection, Criteo
click-through rate); the seed gives neither widths nor tokenisation, so kdlab documents its choices here:

==================  ======  ======  =====  ============  =============================================
name                layers  hidden  heads  intermediate  notes
==================  ======  ======  =====  ============  =============================================
``bert12``          12      768     12     3072          BERT-base (Devlin et al., 2019)
``bert4``           4       312     12     1200          TinyBERT-4 (Jiao et al., 2020) widths
``bert12_tiny``     12      64      4      128           cheap teacher for CPU runs and tests
``bert4_tiny``      4       32      2      64            cheap student for CPU runs and tests
==================  ======  ======  =====  ============  =============================================

The encoder is ``transformers.BertModel`` built from a ``BertConfig`` (nothing is downloaded). Inputs are token ids
``[B, L]`` (an int tensor, every position attended) or a dict with ``input_ids``, ``attention_mask`` and optionally
``token_type_ids`` (each ``[B, L]``). For tabular data the data source gives every field its own id range (field
``f``'s values are ``offset_f + local id``), so one embedding table holds per-field embeddings: equal raw values in
different fields are different tokens; position embeddings tell the fields apart as well.

Taps (the model contract for sequence models): ``embed`` (the embedding output) and ``layer1`` .. ``layerN`` (each
layer's hidden states), all ``[B, L, H]``, and ``pool`` ``[B, H]`` (BERT's pooler: ``tanh(W h_[CLS] + b)``), the
classifier's input: ``logits = classifier(dropout(pool))``. There are no image feature maps (``stem``,
``stageK``): a method that needs them is refused when the run is built, with a message saying so.

``hf:<folder>`` builds the model from any local Hugging Face BERT checkpoint folder (``config.json`` and weights):
``BertModel.from_pretrained(folder, local_files_only=True)`` plus a new classifier for ``num_classes``; when the data
source fixes another vocabulary size (tabular field tokens), the word embeddings are resized (new rows random).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.base import TapError, TapModel
from kdlab.types import TapInfo

log = logging.getLogger("kdlab")

#: Widths of the registered BERTs: (layers, hidden, heads, intermediate).
WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "bert12": (12, 768, 12, 3072),
    "bert4": (4, 312, 12, 1200),
    "bert12_tiny": (12, 64, 4, 128),
    "bert4_tiny": (4, 32, 2, 64),
}

#: Defaults when the data does not declare its vocabulary / length (e.g. a model built on its own).
DEFAULT_VOCAB = 30522
DEFAULT_POSITIONS = 512


def _token_inputs(x: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``x`` as BertModel keyword inputs; a float tensor (a shape probe of zeros) is cast to ids."""
    if isinstance(x, Mapping):
        out = {"input_ids": x["input_ids"].long()}
        for key in ("attention_mask", "token_type_ids"):
            if key in x:
                out[key] = x[key].long()
        return out
    ids = x.long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class BertClassifier(TapModel):
    """A BERT encoder with a ``[CLS]``-pooled linear classifier, following the tap contract for sequences.

    Args:
        encoder: a ``transformers.BertModel`` with its pooling layer.
        num_classes: ``K``.
        dropout: dropout before the classifier (BERT's ``hidden_dropout_prob``).
        name: registry name (for messages).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1, name: str = "bert") -> None:
        super().__init__()
        self.bert = encoder
        hidden = encoder.config.hidden_size
        self.num_layers = encoder.config.num_hidden_layers
        self.name = name
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        self.input_size = (min(16, encoder.config.max_position_embeddings),)  # a probe of 16 tokens

    def tap_info(self) -> tuple[TapInfo, ...]:
        h = self.bert.config.hidden_size
        layers = [TapInfo(f"layer{i}", h, 1, "sequence") for i in range(1, self.num_layers + 1)]
        return (TapInfo("embed", h, 1, "sequence"), *layers, TapInfo("pool", h, 1, "pool"))

    def check_taps(self, taps: Collection[str], model_name: str | None = None) -> frozenset[str]:
        wanted = frozenset(taps)
        missing = sorted(wanted - set(self.tap_names()))
        if missing:
            name = model_name or self.name
            raise TapError(
                f"model {name!r} is a sequence model (BERT): it has no image feature maps such as "
                f"{', '.join(missing)}; it provides {', '.join(self.tap_names())} ([B, L, H] hidden states and the "
                "[B, H] pooled [CLS] vector). Use a logit-based or fusion method (kd, dkd, dist, tekap, anl_kd, "
                "ada_kd, wls_kd, rw_kd, tgeo_kd) or one that reads only 'pool'"
            )
        return wanted

    def _forward(self, x: Tensor | Mapping[str, Tensor], taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        layers = taps - {"pool"}
        inputs = _token_inputs(x)
        if inputs["input_ids"].device.type == "meta":  # shapes only (transformers' mask code reads values)
            return self._meta_forward(inputs["input_ids"], taps)
        out = self.bert(**inputs, output_hidden_states=bool(layers), return_dict=True)
        pool = out.pooler_output
        feats: dict[str, Tensor] = {}
        if layers:
            hidden = out.hidden_states  # (embeddings, layer1, ..., layerN)
            for name in layers:
                feats[name] = hidden[0] if name == "embed" else hidden[int(name[5:])]
        if "pool" in taps:
            feats["pool"] = pool
        return self.classifier(self.dropout(pool)), feats

    def _meta_forward(self, ids: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        b, length = ids.shape
        h = self.bert.config.hidden_size
        feats = {t: ids.new_empty((b, h) if t == "pool" else (b, length, h), dtype=torch.float32) for t in taps}
        return ids.new_empty((b, self.classifier.out_features), dtype=torch.float32), feats

    def forward_taps(
        self, x: Tensor | Mapping[str, Tensor], taps: Collection[str] = ()
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits ``[B, K]`` and the requested taps (``[B, L, H]`` hidden states, ``pool`` ``[B, H]``) of token
        ids ``[B, L]`` or a dict of ``[B, L]`` tensors (``input_ids``, ``attention_mask``, ``token_type_ids``)."""
        wanted = self.check_taps(taps)
        logits, feats = self._forward(x, wanted)
        return logits, {k: feats[k] for k in taps}

    def forward(self, x: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Token ids ``[B, L]`` (or a dict of ``[B, L]`` tensors) -> ``[B, K]`` logits."""
        return self._forward(x, frozenset())[0]


def bert_config(name: str, vocab_size: int, max_positions: int, pad_token_id: int = 0):
    """The ``transformers.BertConfig`` of registered model ``name`` (see :data:`WIDTHS`)."""
    from transformers import BertConfig

    layers, hidden, heads, inter = WIDTHS[name]
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        type_vocab_size=2,
        attn_implementation="eager",
    )


def _builder(name: str):
    def build(
        num_classes: int = 2,
        in_channels: int = 3,
        vocab_size: int | None = None,
        max_positions: int | None = None,
        pad_token_id: int = 0,
        **_: object,
    ) -> BertClassifier:
        from transformers import BertModel

        del in_channels  # images only
        cfg = bert_config(name, vocab_size or DEFAULT_VOCAB, max_positions or DEFAULT_POSITIONS, pad_token_id)
        return BertClassifier(BertModel(cfg, add_pooling_layer=True), num_classes, cfg.hidden_dropout_prob, name)

    build.__doc__ = f"``{name}``: BERT with (layers, hidden, heads, intermediate) = {WIDTHS[name]}."
    return build


for _name in WIDTHS:
    register_model(_name, family="bert", inputs="tokens", description=f"BERT {WIDTHS[_name]} (layers, hidden, ...)")(
        _builder(_name)
    )


def create_hf(folder: str, num_classes: int = 2, vocab_size: int | None = None, **_: object) -> BertClassifier:
    """A :class:`BertClassifier` initialised from a local Hugging Face BERT checkpoint ``folder`` (never downloads).

    Raises:
        ValueError: ``folder`` is not a directory with a ``config.json`` of a BERT-style model.
    """
    from transformers import BertModel

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model 'hf:{folder}': {str(path)!r} is not a local Hugging Face checkpoint folder (no config.json); "
            "give the folder that holds config.json and the weights (nothing is downloaded)"
        )
    try:
        encoder = BertModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"model 'hf:{folder}': cannot load a BERT encoder from {str(path)!r} ({err})") from None
    if vocab_size is not None and vocab_size != encoder.config.vocab_size:
        log.warning(
            "hf:%s: the data has %d tokens, the checkpoint %d: word embeddings resized (new rows are random)",
            folder,
            vocab_size,
            encoder.config.vocab_size,
        )
        encoder.resize_token_embeddings(vocab_size)
    return BertClassifier(encoder, num_classes, encoder.config.hidden_dropout_prob, f"hf:{folder}")
