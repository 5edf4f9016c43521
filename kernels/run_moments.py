"""Exact moments of a run of 16-bit pixels in LLVM vector IR: one horizontal reduction per run.

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

Measured (``benchmarks/fused_in_cache.py``, one thread, the 60-label slab, runs of 31 voxels on
average): 21.7 ns per run against 22.7 with Numba's loop, of which about 8 ns are the moments
(13.7 ns with them knocked out). On the whole benchmark volume the fused pass is 1.06-1.16x faster
(``benchmarks/ab_fused_word_scan.py``). Runs of hundreds of voxels gain about 2x on the moments.
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
        block = ir.Constant(_i64, BLOCK)

        def load(at):
            ptr = builder.bitcast(builder.gep(data, [at], inbounds=True), _vec(_i16).as_pointer())
            v = builder.load(ptr, align=1)
            return v if signed else builder.xor(v, _const(_i16, [-0x8000] * BLOCK))  # u - 32768

        start_acc = (_const(_i32, [0] * BLOCK), _const(_i64, [0] * (BLOCK // 2)),
                     _const(_i16, [0x7FFF] * BLOCK), _const(_i16, [-0x8000] * BLOCK))
        entry = builder.block
        head = builder.append_basic_block("run_moments16.head")
        body = builder.append_basic_block("run_moments16.body")
        tail = builder.append_basic_block("run_moments16.tail")
        builder.branch(head)

        builder.position_at_end(head)  # full blocks
        t = builder.phi(_i64)
        t.add_incoming(x, entry)
        acc = [builder.phi(a.type) for a in start_acc]
        for phi, a in zip(acc, start_acc, strict=True):
            phi.add_incoming(a, entry)
        builder.cbranch(builder.icmp_signed("<=", builder.add(t, block), e), body, tail)

        builder.position_at_end(body)
        new = _accumulate(builder, load(t), None, acc)
        t.add_incoming(builder.add(t, block), body)
        for phi, a in zip(acc, new, strict=True):
            phi.add_incoming(a, body)
        builder.branch(head)

        builder.position_at_end(tail)  # the partial block, lanes outside [t, e) masked off
        base = builder.select(builder.icmp_signed("<=", builder.add(t, block), size), t, builder.sub(size, block))
        lane = _const(_i32, range(BLOCK))
        keep = builder.and_(builder.icmp_signed(">=", lane, _splat(builder, builder.trunc(builder.sub(t, base), _i32))),
                            builder.icmp_signed("<", lane, _splat(builder, builder.trunc(builder.sub(e, base), _i32))))
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
