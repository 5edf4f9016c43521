"""Moments of a run of pixels in LLVM vector IR: one horizontal reduction per run.

Two kernels: exact integer moments of 16-bit pixels (:func:`run_moments16`) and float64 moments
of float32/float64 pixels with NaN left out (:func:`run_moments_float`, below).

``run_moments16(s, x, e)`` gives the sum, the sum of squares (exact int64), the min and the max
of ``s[x:e]`` for a flat int16 or uint16 array. Numba's own loop (:func:`reduce_cpu._run_moments`)
is vectorised by LLVM 16 values at a time with a scalar epilogue and a reduction of its partial
sums after every run; PET runs are short (tens of voxels), so the epilogue and reduction cost
more than the vector body. Written as vector IR, a run is:

* full blocks of :data:`BLOCK` values: widened to int32, added into int32 lanes (sums), squared
  and added in pairs (``a^2 + b^2 <= 2**31``, exact as unsigned int32; x86's ``pmaddwd``) into
  int64 lanes, min/max taken in int16 lanes: no reduction inside the loop;
* the last, partial block: the ``BLOCK`` values starting at the block (or ending at the array's
  end, when the block would pass it), the lanes outside ``[x, e)`` masked off. It never reads
  outside the array, and no scalar loop is left;
* one reduction of each accumulator.

uint16 values are biased to int16 (``u - 32768``, one XOR of the top bit) and the sums are
unbiased exactly at the end. The IR is generic (no target intrinsics): LLVM lowers it to
AVX-512, AVX2, NEON... The array must hold at least ``BLOCK`` values (callers keep a scalar loop
for smaller ones). Exactness: an int32 sum lane adds one value (at most 2**15 in magnitude) per
block, so runs of up to 2**16 blocks (2 million values) are exact; callers' runs are image rows of
at most 32768 voxels. Square pairs go into int64 lanes.

Float pixels: the shifted sums of the SUV in float64 lanes and the stored min/max are one pass
(no scalar epilogue, no separate extreme loop). Current timings are in ``benchmarks/results/README.md``;
:mod:`.run_loops` holds plain-loop twins with the same results, taken when Numba's internals move.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Values per vector block (64 bytes of int16: one AVX-512 register, two AVX2 registers).
BLOCK = 32

_i16, _i32, _i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)


def _vec(t, n=BLOCK):
    return ir.VectorType(t, n)


def _const(t, values):
    values = list(values)
    return ir.Constant(_vec(t, len(values)), values)


def _splat(builder, value, n=BLOCK):
    vt = _vec(value.type, n)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_i32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(_vec(_i32, n), [0] * n))


def _tail_block(builder, t, e, size, n):
    """Start of the last, partial block of ``[t, e)`` (``e - t < n``) and the mask of its lanes in the span.

    The block starts at ``t``, or ends at the array's end (``size >= n`` values) when it would
    pass it: it never reads outside the array.
    """
    block = ir.Constant(_i64, n)
    base = builder.select(builder.icmp_signed("<=", builder.add(t, block), size), t, builder.sub(size, block))
    lane = _const(_i32, range(n))
    first = _splat(builder, builder.trunc(builder.sub(t, base), _i32), n)
    stop = _splat(builder, builder.trunc(builder.sub(e, base), _i32), n)
    return base, builder.and_(builder.icmp_signed(">=", lane, first), builder.icmp_signed("<", lane, stop))


def _full_blocks(builder, name, x, e, n, start, step):
    """Emit the loop over the full blocks ``[t, t + n)`` of ``[x, e)``: ``acc = step(t, acc)`` from ``start``.

    Leaves the builder at the start of the block after the loop, and returns there the first
    index not yet taken ``t`` (``e - t < n``) and the accumulators.
    """
    entry = builder.block
    head = builder.append_basic_block(f"{name}.head")
    body = builder.append_basic_block(f"{name}.body")
    tail = builder.append_basic_block(f"{name}.tail")
    block = ir.Constant(_i64, n)
    builder.branch(head)

    builder.position_at_end(head)
    t = builder.phi(_i64)
    t.add_incoming(x, entry)
    acc = [builder.phi(value.type) for value in start]
    for phi, value in zip(acc, start, strict=True):
        phi.add_incoming(value, entry)
    builder.cbranch(builder.icmp_signed("<=", builder.add(t, block), e), body, tail)

    builder.position_at_end(body)
    new = step(t, acc)
    t.add_incoming(builder.add(t, block), body)
    for phi, value in zip(acc, new, strict=True):
        phi.add_incoming(value, body)
    builder.branch(head)

    builder.position_at_end(tail)
    return t, acc


def _reduce(builder, op, vec):
    """``llvm.vector.reduce.<op>`` of an integer vector."""
    vt = vec.type
    name = f"llvm.vector.reduce.{op}.v{vt.count}i{vt.element.width}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt.element, [vt]), name)
    return builder.call(fn, [vec])


def _accumulate(builder, v, keep, acc):
    """Add block ``v`` (``<BLOCK x i16>``; only lanes where ``keep``, all when None) to the accumulators.

    ``acc`` is (sums ``<BLOCK x i32>``, sums of squares ``<BLOCK/2 x i64>``, min, max ``<BLOCK x i16>``).
    """
    s1, s2, lo, hi = acc
    vz = v if keep is None else builder.select(keep, v, _const(_i16, [0] * BLOCK))
    w = builder.sext(vz, _vec(_i32))
    sq = builder.mul(w, w)
    even = builder.shuffle_vector(sq, sq, _const(_i32, range(0, BLOCK, 2)))
    odd = builder.shuffle_vector(sq, sq, _const(_i32, range(1, BLOCK, 2)))
    s1 = builder.add(s1, w)
    s2 = builder.add(s2, builder.zext(builder.add(even, odd), _vec(_i64, BLOCK // 2)))
    vlo = v if keep is None else builder.select(keep, v, _const(_i16, [0x7FFF] * BLOCK))
    vhi = v if keep is None else builder.select(keep, v, _const(_i16, [-0x8000] * BLOCK))
    lo = builder.select(builder.icmp_signed("<", vlo, lo), vlo, lo)
    hi = builder.select(builder.icmp_signed(">", vhi, hi), vhi, hi)
    return s1, s2, lo, hi


@intrinsic
def run_moments16(typingctx, array, start, stop):
    """``(sum, sum of squares, min, max)`` of ``array[start:stop]`` as int64; 16-bit integers, ``array.size >= BLOCK``.

    ``array`` is 1-D and C-contiguous, ``0 <= start < stop <= array.size``.
    """
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and isinstance(array.dtype, types.Integer) and array.dtype.bitwidth == 16
            and isinstance(start, types.Integer) and isinstance(stop, types.Integer)):
        return None
    signed = array.dtype.signed
    sig = types.UniTuple(types.int64, 4)(array, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        data = builder.bitcast(ary.data, _i16.as_pointer())
        size = ary.nitems
        x, e = args[1], args[2]

        def load(at):
            ptr = builder.bitcast(builder.gep(data, [at], inbounds=True), _vec(_i16).as_pointer())
            v = builder.load(ptr, align=1)
            return v if signed else builder.xor(v, _const(_i16, [-0x8000] * BLOCK))  # u - 32768

        start_acc = (_const(_i32, [0] * BLOCK), _const(_i64, [0] * (BLOCK // 2)),
                     _const(_i16, [0x7FFF] * BLOCK), _const(_i16, [-0x8000] * BLOCK))
        t, acc = _full_blocks(builder, "run_moments16", x, e, BLOCK, start_acc,
                              lambda at, acc: _accumulate(builder, load(at), None, acc))
        # the partial block, lanes outside [t, e) masked off
        base, keep = _tail_block(builder, t, e, size, BLOCK)
        s1, s2, lo, hi = _accumulate(builder, load(base), keep, acc)
        s1 = builder.sext(_reduce(builder, "add", s1), _i64)
        s2 = _reduce(builder, "add", s2)
        lo = builder.sext(_reduce(builder, "smin", lo), _i64)
        hi = builder.sext(_reduce(builder, "smax", hi), _i64)
        if not signed:  # u = v + 32768: S2 = S2' + 65536 S1' + 2**30 n, S1 = S1' + 32768 n
            n = builder.sub(e, x)
            bias2 = builder.add(builder.shl(s1, ir.Constant(_i64, 16)), builder.shl(n, ir.Constant(_i64, 30)))
            s2 = builder.add(s2, bias2)
            s1 = builder.add(s1, builder.shl(n, ir.Constant(_i64, 15)))
            lo = builder.add(lo, ir.Constant(_i64, 32768))
            hi = builder.add(hi, ir.Constant(_i64, 32768))
        return context.make_tuple(builder, signature.return_type, [s1, s2, lo, hi])

    return sig, codegen


#: Values per vector block of the float kernel (float32: one AVX-512 register; its float64 sums: two).
FLOAT_BLOCK = 16


def _tree(builder, v, combine):
    """Reduce the lanes of ``v`` by halving: lanes ``[0, n/2)`` combined with ``[n/2, n)``, and so on."""
    n = v.type.count
    while n > 1:
        n //= 2
        top = builder.shuffle_vector(v, v, _const(_i32, [n + i if i < n else i for i in range(v.type.count)]))
        v = combine(v, top)
    return builder.extract_element(v, ir.Constant(_i32, 0))


@intrinsic
def run_moments_float(typingctx, array, start, stop, slope, intercept, shift):
    """``(n, S1, S2, max, min)`` of the run ``array[start:stop]`` of float32 or float64 pixels.

    With ``v = array * slope + intercept`` in float64: ``n`` the number of non-NaN ``v``, ``S1`` and
    ``S2`` the sums of ``v - shift`` and ``(v - shift)**2`` over them; ``max`` and ``min`` are the
    largest and smallest non-NaN *stored* values (``-inf``/``inf`` when all are NaN). Blocks of
    :data:`FLOAT_BLOCK` values in float64 lanes, the last one masked as in :func:`run_moments16`,
    one reduction per run (a fixed tree, so the result does not depend on the machine's vector
    width). ``array`` is 1-D, C-contiguous, at least ``FLOAT_BLOCK`` values; ``0 <= start < stop <= size``.
    """
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and array.dtype in (types.float32, types.float64)
            and all(isinstance(t, types.Integer) for t in (start, stop))
            and all(isinstance(t, types.Float) for t in (slope, intercept, shift))):
        return None
    sig = types.Tuple((types.int64, types.float64, types.float64, types.float64, types.float64))(
        array, types.int64, types.int64, types.float64, types.float64, types.float64)
    n = FLOAT_BLOCK

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        f = ir.FloatType() if signature.args[0].dtype == types.float32 else ir.DoubleType()
        f64 = ir.DoubleType()
        data = builder.bitcast(ary.data, f.as_pointer())
        size = ary.nitems
        x, e, a, b, k = args[1:]
        va, vb, vk = (_splat(builder, value, n) for value in (a, b, k))
        zero = ir.Constant(_vec(f64, n), [0.0] * n)
        start = (ir.Constant(_vec(_i32, n), [0] * n), zero, zero, ir.Constant(_vec(f, n), [float("-inf")] * n),
                 ir.Constant(_vec(f, n), [float("inf")] * n))

        def accumulate(at, keep, acc):
            cnt, s1, s2, hi, lo = acc
            ptr = builder.bitcast(builder.gep(data, [at], inbounds=True), _vec(f, n).as_pointer())
            raw = builder.load(ptr, align=4 if f != f64 else 8)
            wide = raw if f == f64 else builder.fpext(raw, _vec(f64, n))
            v = builder.fadd(builder.fmul(wide, va), vb)
            ok = builder.fcmp_ordered("ord", v, v)  # not NaN
            if keep is not None:
                ok = builder.and_(ok, keep)
                raw = builder.select(keep, raw, ir.Constant(_vec(f, n), [float("nan")] * n))
            d = builder.select(ok, builder.fsub(v, vk), zero)
            cnt = builder.add(cnt, builder.zext(ok, _vec(_i32, n)))
            s1 = builder.fadd(s1, d)
            s2 = builder.fadd(s2, builder.fmul(d, d))
            hi = builder.select(builder.fcmp_ordered(">", raw, hi), raw, hi)  # NaN never wins
            lo = builder.select(builder.fcmp_ordered("<", raw, lo), raw, lo)
            return cnt, s1, s2, hi, lo

        t, acc = _full_blocks(builder, "run_moments_float", x, e, n, start, lambda at, acc: accumulate(at, None, acc))
        # the partial block, lanes outside [t, e) masked off
        base, keep = _tail_block(builder, t, e, size, n)
        cnt, s1, s2, hi, lo = accumulate(base, keep, acc)
        cnt = builder.zext(_reduce(builder, "add", cnt), _i64)
        s1 = _tree(builder, s1, builder.fadd)
        s2 = _tree(builder, s2, builder.fadd)
        hi = _tree(builder, hi, lambda p, q: builder.select(builder.fcmp_ordered(">", q, p), q, p))
        lo = _tree(builder, lo, lambda p, q: builder.select(builder.fcmp_ordered("<", q, p), q, p))
        if f != f64:
            hi, lo = builder.fpext(hi, f64), builder.fpext(lo, f64)
        return context.make_tuple(builder, signature.return_type, [cnt, s1, s2, hi, lo])

    return sig, codegen
