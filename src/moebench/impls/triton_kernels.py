"""The Triton kernels of ``triton-sol`` (``impls.triton_sol`` owns the launches and the reasoning).

Imported only by ``triton_sol`` and only when a run is prepared: the package must import where
Triton is absent. Under ``TRITON_INTERPRET=1`` (set before Triton is first imported) every
``@triton.jit`` is an interpreter function and the kernels run on CPU tensors: that is how
tests/test_triton_sol.py runs them, in a child process.

* ``route_kernel`` -- programs ``[0, n_route)`` each rank one block of BS slots and reserve the
  block's rows in every expert it touches (one atomic per expert); the last of them to finish
  turns the per-expert totals into segment starts. Under fp8, programs ``[n_route, +n_amax)``
  reduce ``|x|`` to the per-tensor scale the same way.
* ``scatter_kernel`` -- reads each token row once and writes it to its k rows (fp8: quantized),
  writes the inverse map, ``permuted_idx`` and ``m_indices`` of its slots, and fills the rows
  that hold no slot (alignment padding, the tail). With ``ROUTE`` it computes the routing itself
  (``_inline_route``) and is the whole permute: one launch, for small T*k*experts.
* ``unpermute_kernel`` -- gathers each token's rows, weights them in fp32 and writes the token.

Counters (int32, zero between calls: every kernel that raises one resets it before it ends):
``[amax bits, amax ticket, route ticket, unused, per-expert count x NB]``. Scratch (int32):
``[packed slot x T*k, segment start x NB, expert count x NB]``; a packed slot is
``offset_in_expert << LOG_NB | local_expert``, -1 for another rank's expert.
"""

# No "from __future__ import annotations": kernel parameters are read as tl.constexpr by annotation.
import triton
import triton.language as tl

from moebench.quant import FP8_MAX_E4M3

# Globals a kernel reads must be constexpr.
FP8_MAX = tl.constexpr(FP8_MAX_E4M3)
SCALE_MIN = tl.constexpr(1e-12)  # quant.quantize_fp8_per_tensor's lower clamp of the scale
# offsets into the counters
AMAX = tl.constexpr(0)
AMAX_TICKET = tl.constexpr(1)
ROUTE_TICKET = tl.constexpr(2)
EXPERT_COUNTS = tl.constexpr(4)


@triton.jit
def _slot_keys(ids_ptr, emap_ptr, offs, n_slots, n_local, HAS_EMAP: tl.constexpr, SPARE: tl.constexpr):
    """Bin of each flat slot: its local expert, ``n_local`` when another expert-parallel rank owns
    the expert, ``SPARE`` past the last slot."""
    inside = offs < n_slots
    expert = tl.load(ids_ptr + offs, mask=inside, other=0).to(tl.int32)
    if HAS_EMAP:
        expert = tl.load(emap_ptr + expert, mask=inside, other=-1)
    # an id out of range counts as another rank's: tl.histogram must never see a bin >= NB
    key = tl.where((expert >= 0) & (expert < n_local), expert, n_local)
    return tl.where(inside, key, SPARE)


@triton.jit
def _route_program(p, ids_ptr, emap_ptr, cnt_ptr, route_ticket_ptr, packed_ptr, start_ptr, count_ptr, efto_ptr,
                   n_slots, n_local, n_route, HAS_EMAP: tl.constexpr, ALIGN: tl.constexpr, NB: tl.constexpr,
                   LOG_NB: tl.constexpr, BS: tl.constexpr, SUB: tl.constexpr, GATHER: tl.constexpr):
    bins = tl.arange(0, NB)
    jj = tl.arange(0, BS)
    kj = _slot_keys(ids_ptr, emap_ptr, p * BS + jj, n_slots, n_local, HAS_EMAP, NB - 1)
    hist = tl.histogram(kj, NB)
    # The block's rows of expert e start at the old count: blocks of one expert are placed in the
    # order their atomics land (program order under the interpreter, so the reference's order).
    take = (bins < n_local) & (hist > 0)
    base = tl.where(take, tl.atomic_add(cnt_ptr + bins, hist, mask=take), 0)
    for s in range(0, BS, SUB):
        ii = s + tl.arange(0, SUB)
        slot = p * BS + ii
        ki = _slot_keys(ids_ptr, emap_ptr, slot, n_slots, n_local, HAS_EMAP, NB - 1)
        # stable: same-expert slots earlier in the block come first
        rank = tl.sum(((ki[:, None] == kj[None, :]) & (jj[None, :] < ii[:, None])).to(tl.int32), axis=1)
        if GATHER:
            b = tl.gather(base, ki, 0)
        else:  # base[ki] as a one-hot select: more arithmetic, no layout conversion
            b = tl.sum(tl.where(ki[:, None] == bins[None, :], base[None, :], 0), axis=1)
        packed = tl.where(ki < n_local, ((b + rank) << LOG_NB) | ki, -1)
        tl.store(packed_ptr + slot, packed, mask=slot < n_slots)
    # Every thread's atomics are done before the ticket is drawn (they returned their values).
    tl.debug_barrier()
    if tl.atomic_add(route_ticket_ptr, 1) == n_route - 1:
        # Last routing program: every block has reserved its rows, the counts are final.
        local = bins < n_local
        count = tl.where(local, tl.atomic_xchg(cnt_ptr + bins, 0, mask=local), 0)
        if ALIGN > 1:
            padded = (count + ALIGN - 1) // ALIGN * ALIGN
        else:
            padded = count
        start = tl.cumsum(padded, 0) - padded  # start[n_local] = rows of all local segments
        tl.store(start_ptr + bins, start)
        tl.store(count_ptr + bins, count)
        tl.store(efto_ptr + bins, start.to(tl.int64), mask=bins <= n_local)
        tl.atomic_xchg(route_ticket_ptr, 0)


@triton.jit
def _amax_program(q, x_ptr, amax_ptr, amax_ticket_ptr, scale_ptr, numel, n_amax,
                  AMAX_BLOCK: tl.constexpr, AMAX_ITERS: tl.constexpr):
    """Max of |x| over one chunk into a device-wide atomic max; the last program to finish turns
    it into the scale and resets both counters, so a CUDA graph replays with no memset node."""
    first = q.to(tl.int64) * (AMAX_BLOCK * AMAX_ITERS)
    m = tl.zeros([AMAX_BLOCK], dtype=tl.float32)
    for i in tl.static_range(AMAX_ITERS):
        offs = first + i * AMAX_BLOCK + tl.arange(0, AMAX_BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0)
        m = tl.maximum(m, tl.abs(x.to(tl.float32)))
    # |x| >= 0, so its float bits order as int32: an integer atomic max is exact.
    tl.atomic_max(amax_ptr, tl.max(m, axis=0).to(tl.int32, bitcast=True))
    if tl.atomic_add(amax_ticket_ptr, 1) == n_amax - 1:
        amax = tl.atomic_xchg(amax_ptr, 0).to(tl.float32, bitcast=True)
        tl.atomic_xchg(amax_ticket_ptr, 0)
        tl.store(scale_ptr, tl.maximum(tl.math.div_rn(amax, FP8_MAX), SCALE_MIN))


@triton.jit
def route_kernel(ids_ptr, emap_ptr, counters_ptr, packed_ptr, start_ptr, count_ptr, efto_ptr, x_ptr, scale_ptr,
                 n_slots, n_local, n_route, numel, n_amax,
                 HAS_EMAP: tl.constexpr, ALIGN: tl.constexpr, NB: tl.constexpr, LOG_NB: tl.constexpr,
                 BS: tl.constexpr, SUB: tl.constexpr, GATHER: tl.constexpr,
                 FP8: tl.constexpr, AMAX_BLOCK: tl.constexpr, AMAX_ITERS: tl.constexpr):
    pid = tl.program_id(0)
    if pid < n_route:
        _route_program(pid, ids_ptr, emap_ptr, counters_ptr + EXPERT_COUNTS, counters_ptr + ROUTE_TICKET,
                       packed_ptr, start_ptr, count_ptr, efto_ptr, n_slots, n_local, n_route,
                       HAS_EMAP, ALIGN, NB, LOG_NB, BS, SUB, GATHER)
    elif FP8:
        _amax_program(pid - n_route, x_ptr, counters_ptr + AMAX, counters_ptr + AMAX_TICKET, scale_ptr,
                      numel, n_amax, AMAX_BLOCK, AMAX_ITERS)


@triton.jit
def _e4m3_bits(f):
    """fp32 (|f| <= 448) to e4m3fn bits, round to nearest even, in integer arithmetic. Used under
    Triton's interpreter only, whose float8 cast rounds wrongly (half up, and a mantissa carry
    corrupts the exponent); compiled kernels use the hardware conversion."""
    bits = f.to(tl.uint32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    # normals: drop 20 of the 23 mantissa bits (ties to even), rebias the exponent 127 -> 7
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    # below 2^-6: multiples of 2^-9, rounded by the fp32 adder (the 1.5 * 2^23 trick)
    sub = (a.to(tl.float32, bitcast=True) * 512.0 + 12582912.0).to(tl.uint32, bitcast=True) - 0x4B400000
    return (tl.where(a < 0x3C800000, sub, normal) | sign).to(tl.uint8)


@triton.jit
def _inline_route(ids_ptr, emap_ptr, first_slot, n_slots, n_local, HAS_EMAP: tl.constexpr, NB: tl.constexpr,
                  HB: tl.constexpr):
    """Fused path: every program histograms all T*k slots itself (no second launch, no grid-wide
    sync) and returns each bin's segment start and base (start + its slots before
    ``first_slot``): O(T*k * NB/32) work per program, so only used where that is small."""
    bins = tl.arange(0, NB)
    before = tl.zeros([NB], dtype=tl.int32)
    after = tl.zeros([NB], dtype=tl.int32)
    # A while loop: Triton's interpreter cannot take a runtime range() bound under numpy >= 2.4.
    # One histogram per chunk, two for the chunk holding first_slot.
    c = 0
    while c < n_slots:
        offs = c + tl.arange(0, HB)
        key = _slot_keys(ids_ptr, emap_ptr, offs, n_slots, n_local, HAS_EMAP, NB - 1)
        if c + HB <= first_slot:
            before += tl.histogram(key, NB)
        elif c >= first_slot:
            after += tl.histogram(key, NB)
        else:
            early = offs < first_slot
            before += tl.histogram(tl.where(early, key, NB - 1), NB)
            after += tl.histogram(tl.where(early, NB - 1, key), NB)
        c += HB
    count = tl.where(bins < n_local, before + after, 0)
    start = tl.cumsum(count, 0) - count
    return start, start + before


@triton.jit
def _fill_padding(f, start_ptr, count_ptr, pidx_ptr, midx_ptr, n_slots, n_local,
                  HAS_M: tl.constexpr, ALIGN: tl.constexpr, EG: tl.constexpr):
    """Alignment padding of experts [f*EG, (f+1)*EG): no slot, but the segment's expert in
    m_indices, as the reference."""
    expert = f * EG + tl.arange(0, EG)
    mine = expert < n_local
    count = tl.load(count_ptr + expert, mask=mine, other=0)
    first = tl.load(start_ptr + expert, mask=mine, other=0) + count
    col = tl.arange(0, ALIGN)
    rows = first[:, None] + col[None, :]
    pad = col[None, :] < ((count + ALIGN - 1) // ALIGN * ALIGN - count)[:, None]
    tl.store(pidx_ptr + rows, n_slots, mask=pad)
    if HAS_M:
        tl.store(midx_ptr + rows, expert[:, None] + 0 * col[None, :], mask=pad)


@triton.jit
def _fill_tail(f, tail_start, pidx_ptr, midx_ptr, n_slots, n_rows, HAS_M: tl.constexpr, RC: tl.constexpr):
    """Rows [f*RC, (f+1)*RC) past the last local segment: unused room and other ranks' slots."""
    rows = f * RC + tl.arange(0, RC)
    tail = (rows >= tail_start) & (rows < n_rows)
    tl.store(pidx_ptr + rows, n_slots, mask=tail)
    if HAS_M:
        tl.store(midx_ptr + rows, -1, mask=tail)


@triton.jit
def scatter_kernel(x_ptr, ids_ptr, emap_ptr, packed_ptr, start_ptr, count_ptr, out_ptr, scale_ptr,
                   inv_ptr, pidx_ptr, midx_ptr, efto_ptr, n_tokens, hidden, n_slots, n_local, n_rows,
                   K: tl.constexpr, TOK: tl.constexpr, BH: tl.constexpr, NB: tl.constexpr, LOG_NB: tl.constexpr,
                   ROUTE: tl.constexpr, HAS_EMAP: tl.constexpr, SP: tl.constexpr, HB: tl.constexpr,
                   GATHER: tl.constexpr, FP8: tl.constexpr, SOFT_FP8: tl.constexpr, HAS_M: tl.constexpr,
                   ALIGN: tl.constexpr, FILL: tl.constexpr, EG: tl.constexpr, RC: tl.constexpr):
    """TOK tokens x BH columns: one read of the input, K writes (fp8: ``out_ptr`` is a uint8 view,
    values quantized once before the K stores). A slot's row comes from ``route_kernel``'s packed
    offset, or with ROUTE from routing recomputed here (the one-launch path). Programs of column
    block 0 also write the index outputs of their slots and, with FILL, the rows without a slot."""
    pt = tl.program_id(0)
    ph = tl.program_id(1)
    tok = pt * TOK + tl.arange(0, TOK)
    col = ph * BH + tl.arange(0, BH)
    tm, cm = tok < n_tokens, col < hidden
    # issued first: the row's DRAM latency overlaps the index work below
    v = tl.load(x_ptr + tok[:, None].to(tl.int64) * hidden + col[None, :], mask=tm[:, None] & cm[None, :])
    if FP8:
        # quant.quantize_fp8_per_tensor: x.float() / scale (IEEE division), clamp, e4m3 RNE
        q = tl.math.div_rn(v.to(tl.float32), tl.load(scale_ptr))
        q = tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX)
        if SOFT_FP8:
            v = _e4m3_bits(q)
        else:
            v = q.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    bins = tl.arange(0, NB)
    if ROUTE:
        first_slot = pt * TOK * K
        start, base = _inline_route(ids_ptr, emap_ptr, first_slot, n_slots, n_local, HAS_EMAP, NB, HB)
        block = first_slot + tl.arange(0, SP)  # this program's slots (and, past TOK*K, unused ones)
        block_key = _slot_keys(ids_ptr, emap_ptr, block, n_slots, n_local, HAS_EMAP, NB - 1)
        if (pt == 0) & (ph == 0):
            tl.store(efto_ptr + bins, start.to(tl.int64), mask=bins <= n_local)
    for j in tl.static_range(K):
        slot = tok * K + j
        if ROUTE:
            key = _slot_keys(ids_ptr, emap_ptr, slot, n_slots, n_local, HAS_EMAP, NB - 1)
            local = key < n_local
            rank = tl.sum(((block_key[None, :] == key[:, None]) & (block[None, :] < slot[:, None])).to(tl.int32),
                          axis=1)
            if GATHER:
                row = tl.gather(base, key, 0) + rank
            else:
                row = tl.sum(tl.where(key[:, None] == bins[None, :], base[None, :], 0), axis=1) + rank
        else:
            packed = tl.load(packed_ptr + slot, mask=tm, other=-1)
            local = packed >= 0
            key = packed & (NB - 1)
            row = tl.load(start_ptr + key, mask=local, other=0) + (packed >> LOG_NB)
        if ph == 0:
            tl.store(inv_ptr + slot, tl.where(local, row, -1), mask=tm)
            tl.store(pidx_ptr + row, slot, mask=local)
            if HAS_M:
                tl.store(midx_ptr + row, key, mask=local)
        tl.store(out_ptr + row[:, None].to(tl.int64) * hidden + col[None, :], v,
                 mask=local[:, None] & cm[None, :])
    if FILL:
        if ph == 0:
            if ROUTE:
                tail_start = tl.sum(tl.where(bins == n_local, start, 0), axis=0)
            else:
                tail_start = tl.load(start_ptr + n_local)
                if ALIGN > 1:
                    _fill_padding(pt, start_ptr, count_ptr, pidx_ptr, midx_ptr, n_slots, n_local, HAS_M, ALIGN, EG)
            _fill_tail(pt, tail_start, pidx_ptr, midx_ptr, n_slots, n_rows, HAS_M, RC)


@triton.jit
def unpermute_kernel(rows_ptr, inv_ptr, w_ptr, out_ptr, n_tokens, hidden,
                     K: tl.constexpr, TOK: tl.constexpr, BH: tl.constexpr):
    """TOK tokens x BH columns: the K rows of each token (slots of other ranks skipped, never
    read), weighted and summed in fp32, one write in the activation dtype."""
    tok = tl.program_id(0) * TOK + tl.arange(0, TOK)
    col = tl.program_id(1) * BH + tl.arange(0, BH)
    tm, cm = tok < n_tokens, col < hidden
    acc = tl.zeros([TOK, BH], dtype=tl.float32)
    for j in tl.static_range(K):
        row = tl.load(inv_ptr + tok * K + j, mask=tm, other=-1)
        w = tl.load(w_ptr + tok * K + j, mask=tm, other=0.0).to(tl.float32)
        r = tl.load(rows_ptr + row[:, None].to(tl.int64) * hidden + col[None, :],
                    mask=(row >= 0)[:, None] & cm[None, :], other=0.0)
        acc += r.to(tl.float32) * w[:, None]
    tl.store(out_ptr + tok[:, None].to(tl.int64) * hidden + col[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=tm[:, None] & cm[None, :])


# Under TRITON_INTERPRET=1 the decorators above return interpreter functions.
INTERPRETED = type(route_kernel).__name__ == "InterpretedFunction"
HAS_GATHER = hasattr(tl, "gather")  # Triton >= 3.2
