"""A throughput forward pass for `BartForSequenceClassification`, exact in float32.

It runs on the transformers model's own parameters (no copies) and returns the same logits as
`model(input_ids, attention_mask).logits` (within float32 rounding), doing less work:

* The classification head reads the decoder's state at each row's last `</s>` only. So the
  last decoder layer runs at that one position: its self-attention still needs keys/values at
  every earlier position (it is causal), but its query, output projection, cross-attention and
  feed-forward are computed for one token per row instead of T. With a single query, the
  key/value projections themselves fold into the query and the output ("absorbed" attention,
  see `_single_query_attention`), so that layer costs about as much as one token's worth of
  projections, whatever T is.
* No host-device synchronisation: transformers' head counts `</s>` per row
  (`unique_consecutive`) and selects them with a boolean mask, both of which wait for the
  device; here `last` (each row's length - 1, known on the host before the batch is copied)
  arrives as data and the decoder state is gathered with index ops.
* Encoder (and non-final decoder) attention goes through
  `torch.nn.functional.scaled_dot_product_attention` with a boolean padding mask broadcast over
  heads and query positions, with no per-call mask building in Python.

Shapes depend only on the input shapes and there is no Python control flow on tensor values,
so the padded path can be captured in a CUDA graph per batch shape (`GraphedForward`, opt-in
through `ModelConfig.cuda_graphs`) or wrapped in `torch.compile` (not done here).

Inputs must be right-padded pairs `<s> text </s></s> hypothesis </s>` (as `zeroshot.score`
builds them): position p of a row is at learned position p, and `last` is the index of the
row's final `</s>`.

GPU notes (not validated: written and tested on a CPU-only machine):

* SDPA with an `attn_mask` never runs the flash backend (its gate rejects any mask). On CUDA
  the encoder's masked attention goes to cuDNN attention (fp16/bf16, mask shapes it accepts,
  where enabled) or the memory-efficient kernel (fp32/fp16/bf16, takes a broadcast boolean or
  additive mask), else math. The earlier decoder layers' causal, unmasked attention can use
  flash. Padding-free attention would be `torch.nn.attention.varlen.varlen_attn` (flash
  varlen: CUDA, fp16/bf16 only, so it cannot be checked against float32 here); not used.
* Copy `input_ids`, `attention_mask` and `last` together (pinned, `non_blocking=True`); the
  padded forward then queues kernels without waiting for the device.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FastBartClassifier",
    "GraphedForward",
    "last_token_index",
    "lengths_to_mask",
    "row_bucket",
    "supports",
]


def _bart_class():
    from transformers import BartForSequenceClassification

    return BartForSequenceClassification


def supports(model: nn.Module) -> bool:
    """True when `FastBartClassifier(model)` computes the same logits as `model(...)`.

    Exactly transformers' `BartForSequenceClassification` (subclasses may change the forward),
    in eval mode (dropout is not implemented), with plain `nn.Linear` / `nn.LayerNorm` modules
    holding floating-point weights on one real device (not quantized, not offloaded).
    """
    try:
        cls = _bart_class()
    except ImportError:
        return False
    if type(model) is not cls or model.training:
        return False
    cfg = model.config
    if cfg.pad_token_id is None or cfg.decoder_start_token_id is None:
        return False
    if cfg.decoder_layers < 1 or cfg.d_model % cfg.encoder_attention_heads:
        return False
    if cfg.d_model % cfg.decoder_attention_heads:
        return False
    for m in model.modules():
        # Linear8bitLt and friends subclass nn.Linear with a different forward: exact types only.
        if isinstance(m, nn.Linear) and type(m) is not nn.Linear:
            return False
        if isinstance(m, nn.LayerNorm) and type(m) is not nn.LayerNorm:
            return False
    params = list(model.parameters())
    devices = {p.device for p in params}
    if len(devices) != 1 or next(iter(devices)).type == "meta":
        return False
    return all(p.dtype.is_floating_point for p in params)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each right-padded row's last real token (its final `</s>`): length - 1.

    Call it on the host copy of the mask, before the batch goes to the device.
    """
    return attention_mask.sum(dim=1, dtype=torch.long) - 1


def lengths_to_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """Boolean right-padding mask [B, t] from row lengths [B], built where `lengths` lives (on
    the device, the batch's only per-row data that needs to travel besides its ids)."""
    return torch.arange(t, device=lengths.device) < lengths.view(-1, 1)


def _linear(x: torch.Tensor, m: nn.Linear) -> torch.Tensor:
    return F.linear(x, m.weight, m.bias)


def _layer_norm(x: torch.Tensor, m: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def _heads(x: torch.Tensor, b: int, t: int, attn: nn.Module) -> torch.Tensor:
    """[B, T, d] (or [B*T, d]) -> [B, H, T, dh] as a view: memory stays [B, T, H, dh], which is
    the layout SDPA's CPU kernel reads fastest and also writes its output in."""
    return x.view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)


def _attention(
    attn: nn.Module,
    x: torch.Tensor,
    kv: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool = False,
) -> torch.Tensor:
    """BartAttention.forward (without cache) through fused SDPA: queries from x [B, Tq, d],
    keys/values from kv [B, Tk, d]; `mask` is boolean, True where a key may be attended."""
    b, tq, d = x.shape
    tk = kv.shape[1]
    q = _heads(_linear(x, attn.q_proj), b, tq, attn)
    k = _heads(_linear(kv, attn.k_proj), b, tk, attn)
    v = _heads(_linear(kv, attn.v_proj), b, tk, attn)
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=attn.scaling
    )
    return _linear(o.transpose(1, 2).reshape(b, tq, d), attn.out_proj)


def _single_query_attention(
    attn: nn.Module, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """BartAttention for one query per row, x [B, d], keys/values from kv [B, T, d] -> [B, d].

    With one query the key and value projections never need to be applied to the T rows:
    per head h, q_h . (W_kh y_j + b_kh) = (W_kh^T q_h) . y_j + q_h . b_kh, and the last term
    is the same for every j, so softmax drops it; sum_j p_j (W_vh y_j + b_vh) =
    W_vh (sum_j p_j y_j) + b_vh because the p_j sum to 1. That is H x T x d multiply-adds for
    the scores and as many for the context, instead of 2 x T x d x d for the projections.
    Mathematically identical; only the float32 rounding order differs (~1e-7 relative).
    """
    b, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    q = _linear(x, attn.q_proj).view(b, h, dh).transpose(0, 1)  # [H, B, dh]
    wk = attn.k_proj.weight.view(h, dh, d)
    wv = attn.v_proj.weight.view(h, dh, d)
    qk = torch.bmm(q, wk).transpose(0, 1)  # [B, H, d]: the query seen in model space
    # Scores, softmax and the weighted sum accumulate in float32 (or wider) for half-precision
    # models, as SDPA's kernels do; only the [B, T, d] states are upcast, not the weights.
    acc = torch.promote_types(kv.dtype, torch.float32)
    kv_acc = kv.to(acc)
    scores = torch.bmm(qk.to(acc), kv_acc.transpose(1, 2)) * attn.scaling  # [B, H, T]
    scores = scores.masked_fill(~mask, float("-inf"))  # every row keeps at least one key
    ctx = torch.bmm(torch.softmax(scores, dim=-1), kv_acc).to(kv.dtype)  # [B, H, d]
    o = torch.bmm(ctx.transpose(0, 1), wv.transpose(1, 2)).transpose(0, 1)  # [B, H, dh]
    if attn.v_proj.bias is not None:
        o = o + attn.v_proj.bias.view(h, dh)
    return _linear(o.reshape(b, d), attn.out_proj)


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """BartEncoderLayer's float16 overflow guard, without reading the flag on the host."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max - 1000
    return torch.where(torch.isfinite(x).all(), x, x.clamp(-limit, limit))


def _ffn(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = _linear(layer.activation_fn(_linear(x, layer.fc1)), layer.fc2)
    return _layer_norm(x + y, layer.final_layer_norm)


def _encoder_layer(layer: nn.Module, x: torch.Tensor, attend) -> torch.Tensor:
    """BartEncoderLayer on rows x [..., d]; `attend(q, k, v, attn)` does the token mixing."""
    a = layer.self_attn
    o = attend(_linear(x, a.q_proj), _linear(x, a.k_proj), _linear(x, a.v_proj), a)
    x = _layer_norm(x + _linear(o, a.out_proj), layer.self_attn_layer_norm)
    return _clamp_fp16(_ffn(layer, x))


class FastBartClassifier(nn.Module):
    """`BartForSequenceClassification` logits computed on the model's own parameters.

    `forward(input_ids [B, T], attention_mask [B, T], last [B]) -> float32 logits [B, labels]`,
    with right padding and `last` = each row's length - 1 (see `last_token_index`). Inference
    only; check `supports(model)` first.

    `unpad` runs the encoder's projections, feed-forward and layer norms on the real tokens
    only (packed [N, d] rows), padding them out just for attention. It pays on a CPU, where
    compute is the bottleneck and the padded share of a batch is pure waste; its shapes
    depend on the mask's contents (`nonzero`), which on a GPU is a host-device synchronisation
    and defeats CUDA graphs, so by default it is on for CPU models only.
    """

    def __init__(self, model: nn.Module, unpad: bool | None = None):
        super().__init__()
        if not supports(model):
            raise ValueError(f"FastBartClassifier cannot run {type(model).__name__} exactly")
        # Registered as a child: parameters, .to() and .eval() are the model's own, not copies.
        self.model = model
        cfg = model.config
        self.pad_token_id = int(cfg.pad_token_id)
        self.decoder_start_token_id = int(cfg.decoder_start_token_id)
        self.unpad = unpad

    @property
    def config(self):
        return self.model.config

    def _unpad(self, device: torch.device) -> bool:
        return device.type == "cpu" if self.unpad is None else self.unpad

    def _embed(self, stack: nn.Module, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """BartScaledWordEmbedding + BartLearnedPositionalEmbedding (+2 offset) + layer norm.
        `positions` indexes the position table; broadcast against `ids`."""
        tokens = stack.embed_tokens
        x = F.embedding(ids, tokens.weight, tokens.padding_idx)
        if tokens.embed_scale != 1.0:  # a Python float from the config, not a tensor value
            x = x * tokens.embed_scale
        pos = stack.embed_positions
        x = x + F.embedding(positions + pos.offset, pos.weight)
        return _layer_norm(x, stack.layernorm_embedding)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden state [B, T, d]; padded positions hold unused values."""
        encoder = self.model.model.encoder
        b, t = input_ids.shape
        mask = attention_mask.bool().view(b, 1, 1, t)  # broadcast over heads and queries
        positions = torch.arange(t, device=input_ids.device)
        if not self._unpad(input_ids.device):

            def attend(q, k, v, attn):
                o = F.scaled_dot_product_attention(
                    _heads(q, b, t, attn),
                    _heads(k, b, t, attn),
                    _heads(v, b, t, attn),
                    attn_mask=mask,
                    scale=attn.scaling,
                )
                return o.transpose(1, 2).reshape(b, t, -1)

            x = self._embed(encoder, input_ids, positions)
            for layer in encoder.layers:
                x = _encoder_layer(layer, x, attend)
            return x

        # Packed: rows `keep` of the flattened [B*T] batch are real tokens.
        keep = attention_mask.reshape(-1).nonzero().squeeze(1)
        x = self._embed(encoder, input_ids.reshape(-1)[keep], keep % t)
        d = x.shape[-1]
        # Padded q/k/v for SDPA. Only real rows are ever written, so the padded rows stay zero
        # (finite: a masked key must not turn the softmax into NaN) across all layers.
        padded = x.new_zeros(3, b * t, d)

        def attend(q, k, v, attn):
            for i, z in enumerate((q, k, v)):
                padded[i].index_copy_(0, keep, z)
            qp, kp, vp = (_heads(padded[i], b, t, attn) for i in range(3))
            o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=attn.scaling)
            return o.transpose(1, 2).reshape(b * t, d).index_select(0, keep)

        # (float16 only: the overflow guard then looks at real tokens, where transformers also
        # looks at padding; they differ only if a padded position alone overflowed.)
        for layer in encoder.layers:
            x = _encoder_layer(layer, x, attend)
        return x.new_zeros(b * t, d).index_copy_(0, keep, x).view(b, t, d)

    def decode_last(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        last: torch.Tensor,
        encoded: torch.Tensor,
    ) -> torch.Tensor:
        """The decoder's last hidden state at position `last` of each row: [B, d]."""
        decoder = self.model.model.decoder
        b, t = input_ids.shape
        d = encoded.shape[-1]
        # shift_tokens_right: start token, then the inputs moved one place (-100 never occurs
        # in input ids, so its replacement by the pad id is a no-op here).
        start = input_ids.new_full((b, 1), self.decoder_start_token_id)
        shifted = torch.cat([start, input_ids[:, :-1]], dim=1)
        x = self._embed(decoder, shifted, torch.arange(t, device=input_ids.device))
        enc_mask = attention_mask.bool().view(b, 1, 1, t)
        # Earlier decoder layers (none in distilbart-12-1) feed keys/values at every position.
        # transformers passes no decoder mask, so their self-attention is causal only.
        for layer in decoder.layers[:-1]:
            x = _layer_norm(
                x + _attention(layer.self_attn, x, x, None, is_causal=True),
                layer.self_attn_layer_norm,
            )
            x = _layer_norm(
                x + _attention(layer.encoder_attn, x, encoded, enc_mask),
                layer.encoder_attn_layer_norm,
            )
            x = _ffn(layer, x)
        layer = decoder.layers[-1]
        # The causal mask of the query at `last`: keys 0..last (all real tokens, right padding).
        causal = torch.arange(t, device=x.device).view(1, 1, t) <= last.view(b, 1, 1)
        y = x.gather(1, last.view(b, 1, 1).expand(b, 1, d)).view(b, d)
        y = _layer_norm(
            y + _single_query_attention(layer.self_attn, y, x, causal), layer.self_attn_layer_norm
        )
        y = _layer_norm(
            y + _single_query_attention(layer.encoder_attn, y, encoded, enc_mask.view(b, 1, t)),
            layer.encoder_attn_layer_norm,
        )
        return _ffn(layer, y)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, num_labels] as float32, whatever dtype the model runs in."""
        last = last.to(input_ids.device, non_blocking=True)  # a no-op when already there
        encoded = self.encode(input_ids, attention_mask)
        y = self.decode_last(input_ids, attention_mask, last, encoded)
        head = self.model.classification_head
        return _linear(torch.tanh(_linear(y, head.dense)), head.out_proj).float()

    def forward_lengths(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`forward` for right-padded rows given by their lengths [B] (int64, on the ids'
        device): the mask and `last` are derived there, with no host round trip."""
        return self(input_ids, lengths_to_mask(lengths, input_ids.shape[1]), lengths - 1)


def row_bucket(rows: int) -> int:
    """The row count a batch of `rows` is padded to for a CUDA graph: a multiple of an eighth
    of the largest power of two not above it (exact up to 15, then steps of 2 from 16, 4 from
    32, 8 from 64, ...), so padding adds under 1/8 of a batch and 8 buckets per doubling
    cover any size."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    step = max(1, (1 << (rows.bit_length() - 1)) // 8)
    return -(-rows // step) * step


class GraphedForward:
    """Replays one CUDA graph per batch shape (rows bucketed by `row_bucket`, padded length as
    given) around `fn(input_ids [B, T] int64, lengths [B] int64) -> logits [B, labels]`.

    A captured graph launches the whole forward (hundreds of kernels) in one call, so the host
    stays far ahead of the device even for small batches. `fn` must read no tensor value on
    the host (FastBartClassifier's padded path, `forward_lengths`). Extra rows are dummy
    one-token rows (id 0, length 1), or the previous batch's rows of the same shape; their
    logits are dropped. At most `max_graphs` shapes are captured (they share one memory
    pool); other shapes run `fn` eagerly. With `capture=False` (the CPU, tests) every call
    runs `fn` on the row-padded batch, which exercises the padding without a GPU.

    All work is queued on the current stream, so replays, the input copies into the static
    buffers and the caller's read of the (cloned) output are ordered without host waits.
    """

    def __init__(self, fn, max_graphs: int = 128, capture: bool | None = None):
        self.fn = fn
        self.max_graphs = max_graphs
        self.capture = capture
        self.graphs: dict[tuple[int, int], tuple] = {}
        self.pool = None
        self.eager_calls = 0  # shapes past max_graphs, for benchmarks
        self.lock = threading.Lock()  # held while capturing (see TorchBackend.check)

    def _pad(self, input_ids, lengths, rows):
        b, t = input_ids.shape
        ids = input_ids.new_zeros((rows, t))
        lens = lengths.new_ones(rows)
        ids[:b] = input_ids
        lens[:b] = lengths
        return ids, lens

    def __call__(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        rows = row_bucket(b)
        capture = input_ids.is_cuda if self.capture is None else self.capture
        if not capture:
            return self.fn(*self._pad(input_ids, lengths, rows))[:b]
        entry = self.graphs.get((rows, t))
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                self.eager_calls += 1
                return self.fn(input_ids, lengths)
            entry = self._capture(*self._pad(input_ids, lengths, rows))
            self.graphs[rows, t] = entry
        graph, static_ids, static_lengths, static_out = entry
        static_ids[:b].copy_(input_ids, non_blocking=True)
        static_lengths[:b].copy_(lengths, non_blocking=True)
        graph.replay()
        # A copy out of the shared pool: another shape's replay may reuse that memory.
        return static_out[:b].clone()

    def _capture(self, static_ids: torch.Tensor, static_lengths: torch.Tensor) -> tuple:
        device = static_ids.device
        with self.lock:
            # Warm-up on a side stream (cuBLAS workspaces, autotuning), as the CUDA graph
            # documentation prescribes, then capture.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                self.fn(static_ids, static_lengths)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (a health check) do not void it.
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                static_out = self.fn(static_ids, static_lengths)
            if self.pool is None:
                self.pool = graph.pool()
        return graph, static_ids, static_lengths, static_out
