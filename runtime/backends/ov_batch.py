"""Decode steps of concurrent sequences as one batched call of the stateful language model.

A decode step reads all of the LM's weights (~0.6 GB at int8) however many rows it computes, so sequences
decoding at the same time go faster together: 4 rows in one call ran 2.6x the tokens/s of one (bench/batching.md).

A sequence decodes on its own infer request while it is the only one decoding: a lone request pays nothing.
When a second sequence starts decoding, both move into one batched infer request: their KV states are copied
in, left-padded to a common length, and the padding is masked. Each step then feeds one token per row. A row
whose owner has not handed in its token within GATHER_S gets a masked hole at that position instead of holding
the others up, and a row that handed in nothing for IDLE_STEPS steps is moved out.

A sequence leaves the batch when its owner uses it in any other way (a snapshot, restore, reset or a prompt).
Reading the state out of the plugin costs ~27 ms per row of 300 positions and always reads every row, so a
row that leaves with its KV is parked instead: it stays in the state (masked, ~4 ms a step while others
decode) and its KV is copied out by the next read that happens anyway (the next join), by a thread of its own
once no row is live, or when first used. Its owner and the prefix cache hold a KVHandle for it meanwhile.

Sequences that reach their first step together (a burst of requests whose prompts were read one after another)
join in one rebuild: a join waits up to JOIN_WAIT_S for those that have read their prompt and not yet stepped.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from runtime.backends.ov_state import StateWriter

GATHER_S = 0.004  # how long a step waits for rows whose token is not in yet (sampling one takes ~1 ms)
IDLE_STEPS = 8  # steps without a token after which a row is moved out of the batch
JOIN_WAIT_S = 0.02  # how long a join waits for sequences whose first step is due (a rebuild costs 0.3-0.5 s)
SOLO_IDLE_S = 0.25  # a sequence decoding alone that has not stepped for this long no longer counts as decoding


def _valid_positions(mask: np.ndarray):
    """Index of a row's real positions in the state: a slice unless it has holes (then the boolean mask)."""
    valid = mask.astype(bool)
    first = int(np.argmax(valid))
    return slice(first, None) if valid[first:].all() else valid


class KVHandle(Mapping):
    """A parked row's KV, name -> (1, kv_heads, length, head_dim), copied out of the batch when first read."""

    def __init__(self, batch: DecodeBatch, nbytes: int):
        self._batch, self.nbytes = batch, nbytes
        self._arrays: dict | None = None

    def _resolved(self) -> dict:
        if self._arrays is None:
            self._batch.unpark()
        return self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self._resolved()[name]

    def __iter__(self):
        return iter(self._resolved())

    def __len__(self) -> int:
        return len(self._resolved())


@dataclass(eq=False)
class _Row:
    """One sequence's place in the batch."""

    seq: object | None  # the OpenVINOSequence decoding in this row; None once parked
    pending: np.ndarray | None = None  # (hidden,) the token embedding handed in for the next step
    logits: np.ndarray | None = None  # (vocab,) the step's answer, until its owner takes it
    idle: int = 0  # steps in a row without a token from the owner
    handle: KVHandle | None = None  # set when parked: its KV waits in the state for the next read
    gone: bool = False  # dropped from the state at the next step

    @property
    def live(self) -> bool:
        return self.seq is not None and not self.gone


class DecodeBatch:
    """The batched infer request shared by the sequences of one compiled language model."""

    def __init__(self, compiled_lm, compute, snapshot_dtype=np.float16):
        self._lm = compiled_lm
        self._compute = compute  # the backend's lock around every model call
        self._dtype = snapshot_dtype  # of KV copied out (f16 when the plugin keeps u8 anyway)
        self._request = None  # created when two sequences first decode together
        self._writer = None  # its StateWriter
        self._cv = threading.Condition()  # over an RLock: unpark() may be called with it held
        self._rows: list[_Row] = []  # in the order of the batch dimension of the state
        self._mask = np.zeros((0, 0), dtype=np.int64)  # (rows, positions): 1 where a row has a real token
        self._solo = None  # the sequence decoding on its own request, if any
        self._solo_at = 0.0  # when it last stepped
        self._arriving: set = set()  # sequences whose owners wait for the lock to take a step outside the batch
        self._expected: set = set()  # sequences that have read a prompt and not yet stepped
        self._gathering = False  # a join is waiting for expected sequences
        self._position_values = 0  # KV values per position over all layers (heads x head_dim x 2 x layers)
        self.steps = 0  # batched steps run (for tests and logs)
        self.rows_stepped = 0  # tokens computed in them

    # ------------------------------------------------------------------ used by OpenVINOSequence
    def step(self, seq, embed: np.ndarray) -> np.ndarray:
        """Feed one token embedding (hidden,) for seq; return the next logits (vocab,)."""
        if seq.row is None:
            self._arriving.add(seq)  # a join in progress elsewhere may take it in too (one rebuild, not two)
        self._expected.discard(seq)
        with self._cv:
            while self._gathering and seq.row is None:  # another thread is about to join: be part of it
                self._cv.notify_all()
                self._cv.wait(JOIN_WAIT_S)
            self._arriving.discard(seq)
            row = seq.row
            if row is None:
                if not any(r.live for r in self._rows) and not self._other_solo(seq) and not self._arriving:
                    self._solo = seq
                    logits = seq.infer_own(embed[None])  # (may wait for the compute lock: timed from the end)
                    self._solo_at = time.monotonic()
                    return logits
                self._gather(seq)
                row = seq.row
            row.pending = embed
            self._cv.notify_all()
            deadline = time.monotonic() + GATHER_S
            while row.logits is None:
                late = [r for r in self._rows if r.live and r.pending is None]
                now = time.monotonic()
                if not late or now >= deadline:
                    self._run_step()
                else:
                    self._cv.wait(deadline - now)
            logits, row.logits = row.logits, None
            return logits

    def expect(self, seq) -> None:
        """seq has just read its prompt: its first step is a few milliseconds away (a join waits for it)."""
        self._expected.add(seq)

    def leave(self, seq, keep_kv: bool) -> None:
        """Take seq out of the batch (or out of decoding alone); with keep_kv its KV goes to seq.detached."""
        self._expected.discard(seq)
        if seq.row is None and self._solo is not seq:
            return  # nothing to do, and no wait for a step or join in progress (a new prompt starts at once)
        with self._cv:
            if self._solo is seq:
                self._solo = None
            row = seq.row
            if row is None:
                return
            seq.row = None
            if keep_kv:
                seq.detached = self._park(row)
            else:
                row.seq, row.gone = None, True
            self._cv.notify_all()  # a step waiting for this row's token need not wait any longer
            self._unpark_when_idle()

    def unpark(self) -> None:
        """Copy every parked row's KV out of the state (one read for all) and drop those rows."""
        with self._cv:
            self._rebuild([])

    # ------------------------------------------------------------------ internals (hold self._cv)
    def _other_solo(self, seq) -> bool:
        """True when another sequence is decoding alone right now."""
        if self._solo is None or self._solo is seq:
            return False
        if self._solo.row is not None or time.monotonic() - self._solo_at > SOLO_IDLE_S:
            self._solo = None
            return False
        return True

    def _park(self, row: _Row) -> KVHandle:
        nbytes = int(self._mask[self._rows.index(row)].sum()) * self._position_values * np.dtype(self._dtype).itemsize
        row.seq, row.pending, row.handle = None, None, KVHandle(self, nbytes)
        return row.handle

    def _gather(self, seq) -> None:
        """Join seq, after waiting up to JOIN_WAIT_S for sequences that have read their prompts and are about
        to take their first step, so that they come in with the same rebuild."""
        self._gathering = True
        try:
            deadline = time.monotonic() + JOIN_WAIT_S
            while self._expected - {seq} and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)
            self._join(seq)
        finally:
            self._gathering = False
            self._cv.notify_all()

    def _join(self, seq) -> None:
        """Add seq, and the sequence decoding alone if there is one, to the batch."""
        if self._request is None:
            self._request, self._writer = self._lm.create_infer_request(), StateWriter()
        newcomers = [seq] + ([self._solo] if self._solo is not None and self._solo is not seq else [])
        # Sequences whose owners wait for the lock to take their first step come in now as well: all four
        # requests of a burst reach decode together, and one rebuild of 4 rows costs 0.5 s where three in a row
        # (2, 3, then 4 rows) cost 1.15 s, with the cores idle.
        newcomers += [s for s in list(self._arriving) if s.row is None and s not in newcomers]
        self._rebuild(newcomers)
        self._solo = None  # only now: until its row is set, leave() must not take the lock-free way out

    def _rebuild(self, newcomers: list) -> None:
        """One pass over the state, a layer at a time (the f32 copies then stay one layer's size): parked rows
        get their KV copied out and are dropped, live rows are kept (padding every row has in front dropped,
        holes kept masked), newcomers' KV is appended. With no newcomers, the state is only read."""
        parked = [i for i, r in enumerate(self._rows) if r.handle is not None and not r.gone]
        kept = [i for i, r in enumerate(self._rows) if r.live]
        if not parked and not newcomers:
            return
        positions = {i: _valid_positions(self._mask[i]) for i in parked}
        lead = min((int(np.argmax(self._mask[i])) for i in kept), default=0)
        old = self._mask.shape[1] - lead if kept else 0  # positions the kept rows keep
        # Parked rows' KV is gathered here and handed to their handles only once complete: a handle read by
        # another thread meanwhile waits for the lock. A newcomer coming back from a row parked in this very
        # state reads it from here, layer by layer, as it is copied out.
        filled = {i: {} for i in parked}
        by_handle = {id(self._rows[i].handle): filled[i] for i in parked}
        incoming = [by_handle.get(id(kv), kv) for kv in (s.take_kv() for s in newcomers)]
        width = max([old] + [s.length for s in newcomers])
        if newcomers:
            self._position_values = 0
        for st in self._request.query_state():
            arr = st.state.data if parked or kept else None  # (rows, heads, positions, head_dim) f32, one layer
            for i in parked:
                filled[i][st.name] = arr[i:i + 1, :, positions[i]].astype(self._dtype)
            if newcomers:
                kept_layer = [arr[i, :, lead:] for i in kept]  # views: copied once, into the new state
                self._write_layer(st, kept_layer + [kv[st.name][0] for kv in incoming], width)
        for i in parked:
            self._rows[i].handle._arrays, self._rows[i].gone = filled[i], True
        if newcomers:
            self._adopt(kept, lead, newcomers, width)
        elif not kept:  # nothing live is left: start empty
            self._rows, self._mask = [], np.zeros((0, 0), dtype=np.int64)
            self._request.reset_state()

    def _write_layer(self, state, rows: list[np.ndarray], width: int) -> None:
        """Set one layer's state to rows (heads, n_i, head_dim), each left-padded with zeros to width."""
        heads, _, dim = rows[-1].shape
        self._position_values += heads * dim
        full, buf = StateWriter.buffer((len(rows), heads, width, dim))  # zero-filled: the padding
        for j, kv in enumerate(rows):
            full[j, :, width - kv.shape[1]:] = kv
        self._writer.set(state, full, buf)

    def _adopt(self, kept: list[int], lead: int, newcomers: list, width: int) -> None:
        """The rows and mask after a rebuild: kept rows (their front padding cut at lead), then newcomers."""
        mask = np.zeros((len(kept) + len(newcomers), width), dtype=np.int64)
        for j, i in enumerate(kept):
            row = self._mask[i, lead:]
            mask[j, width - row.size:] = row
        for j, seq in enumerate(newcomers, start=len(kept)):
            mask[j, width - seq.length:] = 1
        self._rows, self._mask = [self._rows[i] for i in kept] + [_Row(s) for s in newcomers], mask
        for r in self._rows:
            r.seq.row = r

    def _run_step(self) -> None:
        """One batched infer: rows with a token get its logits, the others a masked hole."""
        kept = [i for i, r in enumerate(self._rows) if not r.gone]
        rows, mask = [self._rows[i] for i in kept], self._mask[kept]
        fed = np.array([r.pending is not None for r in rows])
        hidden = next(r.pending for r in rows if r.pending is not None).shape[-1]
        embeds = np.stack([r.pending if r.pending is not None else np.zeros(hidden, np.float32) for r in rows])
        mask = np.concatenate([mask, fed[:, None].astype(np.int64)], axis=1)
        with self._compute:
            self._request.infer({"inputs_embeds": embeds[:, None].astype(np.float32, copy=False),
                                 "attention_mask": mask,
                                 "position_ids": np.array([[r.seq.length if r.seq else 0] for r in rows], np.int64),
                                 "beam_idx": np.array(kept, dtype=np.int32)})
        logits = self._request.get_tensor("logits").data[:, -1]
        self._rows, self._mask = rows, mask
        self.steps += 1
        self.rows_stepped += int(fed.sum())
        for j, r in enumerate(rows):
            if fed[j]:
                r.logits, r.pending, r.idle = logits[j].copy(), None, 0
                r.seq.length += 1
            elif r.live:
                r.idle += 1
        for r in rows:
            if r.live and r.idle >= IDLE_STEPS:  # its owner stopped decoding without saying so
                seq = r.seq
                seq.row, seq.detached = None, self._park(r)
        self._cv.notify_all()
        self._unpark_when_idle()

    def _unpark_when_idle(self) -> None:
        """Once no row is live, copy the parked rows out in a thread of its own: the last generation to leave
        answers at once, and the copy (~0.5 s for 4 rows) overlaps the next requests' vision instead of
        stalling the next join."""
        if any(r.live for r in self._rows) or not any(r.handle is not None and not r.gone for r in self._rows):
            return
        threading.Thread(target=self.unpark, name="kv-unpark", daemon=True).start()
