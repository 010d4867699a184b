"""ggml's i-quants (the codebook / lattice formats of the low-bit DeepSeek-R1 GGUFs) dequantized.

    IQ_TYPES                              ggml type id -> (name, weights per block, bytes per block)
    dequantize_rows(type, blocks, cols)   uint8 [rows, row_bytes] -> float32 [rows, cols]
    torch_dequantize_rows(...)            the same by the torch formulas (no native code)
    native_linear(type, x, blocks, cols, act)   x [M <= 8, cols] -> [M, rows]: integer block dots
    row_bytes(type, cols) / grid(name) / KSIGNS / lib() / load(march) / variant(march) / isa()

Types: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M -- super-blocks of 256 weights,
each block one fp16 scale (IQ1_M: its 16 bits spread over the top nibbles of the four scale
words), 4-bit (IQ1: 3-bit) sub-scales, and indices into a grid of 8 (IQ3: 4) weight levels
plus sign bits (IQ2_XXS / IQ2_XS / IQ3_XXS: 7 bits per 8 weights, the eighth sign the parity,
``KSIGNS``) or, for IQ1, a +-1/8 shift of the ternary grid point. The dequantized values equal
ggml's ``dequantize_row_iq*`` and gguf-py's ``gguf.quants.dequantize`` bit for bit (float32):
the products run in ggml's order (IQ2: d x (0.5 + s) x 1/4, times the level, then the sign;
IQ1: d x (2 s + 1) times level + delta), with no fused multiply-add (tests/test_gguf_iquants.py
checks both, against llama.cpp's own functions too, with every grid row in use).

Grids: the sorted points of each lattice codebook, a point's code holding coordinate j's level
index in bits b j (b = 2 bits for 3 levels, 3 for 8), stored as varint deltas of the codes,
zlib, base85 (``_GRIDS``; decoded once, a few KiB). They are data, not computable: ggml chose
the points by search. ``grid(name)`` gives the decoded table, uint8 levels (int8 -1/0/1 for IQ1).

``dequantize_rows`` runs kernels/csrc/iquant.c: built with kernels/cpu_native's helpers as
kernels/kquant.py builds its library (the target flags, -O3, torch's OpenMP runtime where the
compiler has it, cached by a hash of source and flags), plus ``-ffp-contract=off``; the grid
tables are passed in from here, so the C holds no copy. Where no compiler works (or
``DUET_KERNELS=reference``) the vectorised torch dequantizer of the same formulas runs.
The same library (kernels/csrc/iquant_dot.h, hashed into the cache key) has the few-row matmul
kernels/kquant.py's ``linear`` runs for up to 8 rows at 8 or 16 activation bits: activations
rounded to llama.cpp's Q8_K blocks exactly as kquant's C does (16: a second code for the
remainder), each weight block unpacked to int8 codes (+-level, IQ1: 8 g +- 1) and integer
sub-scales (2 s + 1) whose products with one exact float32 factor per block (d/8, d/4, d) are
the dequantized weights, then int32 block sums (AVX2 maddubs / madd on codes unpacked in
vectors; ARM64 NEON sdot, or widening multiplies; or plain C: the same integers, the same float
operations, so the builds agree bit for bit; ``iq_row_dot``, one row's, is what kquant's fused
MoE step calls by address). More rows, or act 32, dequantize tiles of rows and multiply with
torch. ``variant(march)`` swaps in another build for a block (tests run the plain-C one on any
x86-64 CPU, and the ARM64 ones on an emulated CPU).
"""

from __future__ import annotations

import base64
import ctypes
import functools
import zlib
from contextlib import contextmanager
from pathlib import Path

import torch

from kernels import cpu_native

SOURCE = Path(__file__).resolve().parent / "csrc" / "iquant.c"
HEADERS = (SOURCE.parent / "iquant_dot.h", SOURCE.parent / "q8_activations.h", SOURCE.parent / "bf16.h")
EXTRA_FLAGS = ("-ffp-contract=off",)
MAX_ROWS = 8            # iq_gemm's most activation rows (kernels/kquant.py's native_rows)
DOT_ACT_BITS = (8, 16)  # the activation precisions with a native i-quant dot product
QK_K = 256

# ggml type id -> (name, weights per block, bytes per block); ids as gguf's GGMLQuantizationType
IQ_TYPES = {16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
            19: ("IQ1_S", 256, 50), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 29: ("IQ1_M", 256, 56)}
NAMES = {v[0]: k for k, v in IQ_TYPES.items()}
IQ1S_DELTA = 0.125      # IQ1: each ternary grid point is shifted by +-1/8 before scaling

# ---------------------------------------------------------------------------------------
# tables

# 7 sign bits -> 8 sign bits: the eighth makes the count of minus signs even (ggml's ksigns_iq2xs)
KSIGNS = torch.tensor([s | (bin(s).count("1") & 1) << 7 for s in range(128)], dtype=torch.int64)

# grid name -> (the levels a coordinate index stands for, coordinates per point)
_LEVELS = {
    "IQ2_XXS": ((8, 25, 43), 8), "IQ2_XS": ((8, 25, 43), 8), "IQ2_S": ((8, 25, 43), 8),
    "IQ3_XXS": ((4, 12, 20, 28, 36, 44, 52, 62), 4), "IQ3_S": ((1, 3, 5, 7, 9, 11, 13, 15), 4),
    "IQ1_S": ((-1, 0, 1), 8),
}
_GRID_OF = {"IQ1_M": "IQ1_S"}   # IQ1_M indexes IQ1_S's grid

# the sorted point codes of each grid: varint deltas, zlib, base85 (see the module docstring)
_GRIDS = {
    "IQ2_XXS": (
        "c-muNVrFJyXXasIV-jcP;oxMJVd9X8XXatmb`i;7Qb_pE#LOcI6l9Z7Wabfx0n%#9;(`_I1}+MBm{@^Al0dy?H8z"
        "JBh2C-lmC7rq@UUicNEmRbEn!sL&CDUes$xEa(Q6)~*lT8H9s|dE*4d038P{_&aahU9Gc9M7-"
        "@(ZAA0#8TiqTPd4bu-MiINS>d$l2s;o#!}+FPLDD9>8MZ^0)t1887^WTns@#zq#P9@gEA5uA#L8NEMnad2|5Cveo"
        "*CB0?*&&*WuoiTU~vml4}9mW%kf4F%JG-fb{9%l4dz|7js#8kA8b)P;Hhq+@Dqlm^u#t+OO|0*nCbn`1US6IZ{#M"
        "I05nVUyMCb2Z@DC2HsC8b`b4Q%rnAMyH`wlIEYoWZh#V+$hyYn(-h"
    ),
    "IQ2_XS": (
        "c-mc%F-"
        "Tic6ox(j@g}#|OC<7m>64^=iSkGrlt)8`b}5RWrPx8RDN+*CL0hCE2pYt}>>WB4N{UEZa1=K|kbvOiU?))!aTYqb"
        "1WJa!Ya&LMa}Ph~eCNM^2bd9Na5!k3*870t*Hwf|EhQLfN?JOs7n*I7waBPC?rlLO+ef00E5zFF#c%^nk{0oRlXg"
        "{}wLc`6T{*8V)IEw;v381YVJ;y1?grmzB5cJC+OLt7+hNuiw4SYq(j~n+R;^2B(=7!>CaRPwq)))wiPdN*I{MN1L"
        "Z^_hbJ^YlN|zsg2%-"
        "M;j*A<wZ8k)r7#xblYTQcb+S_N=R(xtkz0liihPor`6wPX<N{z1D*nHzwWUxmgGsiH=xJkDt%kn#oK0k*w(EX}H9"
        "`?~t1{&$_%m0Qq_80a)@<s8i^V2R}(3{A5<~AW89`YubsN5uX8jqy;A~@qdSsp1ZPJCmT$a(MzKTwd7o)bg12Uk<"
        "WSCp+oywvg!&0>qbc254HLwdc@g%E7Dv`un+3Zc~7An?f}&R)Srs4U;F5q=V8o&Tv?RgV"
    ),
    "IQ2_S": (
        "c-nnay-OoO6nEZZve|Jk*lgT&N&Jc&dkBjMhl-Vj5bOkrg%Gt6#ShXP2gfxY+<zcqV=dU-Rd<Dw|3VZYt&L!3W8s"
        "^b-OX%_Hao-2o8Q-"
        "aI{=8_AfQ7VKUrN`%X*cZH?qSpxpFvFN<fJlrbv|a>1WQxPzQQIQuNTgboC>1$Sp<#F1HdSwI4_M1Q{nUcWZgcYb"
        "XWiR!wE8HH<?An65vFE`5-"
        "`HP%F)Jm=T2A0l_SBzTE4Iqr9K+6N@Im8y=T8%W$%)7zg}nLocRWAAd%c1B)Gp%BKEtg37^q8KSaAm^ZRn*#RZ^M"
        "YeWto{WW<qKnk^P7DeS(<|9C{e0h2f2R8G!WP7P~N1<ScVDD3w#vb+em0EWGhn}*Y1JxwF{=~Yj2-"
        "E?ZJG{dfM|r=6?AY``vd5R7PIV#_U8)>)6`NKbX9wxe>{5y^-"
        "eclf0D<a2qNXmFVb%JyNgMzU)S4(CkF|3C&QL4yV*JWoe@B_zlh-wfU0?uJ+R_zAIPlq^GM*T&!KOukdNCBMhdrW"
        "6(w7LJ8ZsgPvH|-R5%T9F_mQM%}%JC!zk;A~k5Wc*<($tVn~lUeI$U<ND}^{}29S<;Pz(`-_1Gh0Tdqa86iz"
    ),
    "IQ3_XXS": (
        "c-"
        "kF}K~ID*6ol>Y=mSb06<WIncY$3=(2yAM>`lE9|Np<Sc$j2nGWq5X$UzERK7x{E%D|>BQq5pcrG>PDxph7_HAr{v"
        "BYHv*cdV0O)CtUZJ2GE2q_ob^ZK1ZScNzajl$8UJ(A<+MzzJ!U^-"
        "L>Ga`ILG4HKV^$6)gVVbCMD!8Pq?(`jAzLmQUhji9F8H_GYz%P^Zs!k$647z^#<AY<`zPTxiRU1f8S^LUw`_0KfF"
        "FR}rub!+w7=MPrG<OZ}~fB7vBnE"
    ),
    "IQ3_S": (
        "c-keA+fKtk3`E)SE%DwGn$m`XR8*u2-"
        "Vy)*XL!rgt}T1!*nUchkWvDWSOpXxff0=yCnjRBRTfQ*L=h6}D5^9m6AYw`3Z~5QRnqP#h<ZksOlWI2JTjHHhvu*"
        "f2Q<*EDI8gh)X)@8gF?y42SVs2mQ`~gRalT5AC>*iRB;)gg;$;aB{8HzdAv2IA}9_1=r|KO#Ng~P5Ai%&wPl^jh<"
        "7rXYsz(k_#1Crk>%Bfpp9)1TqnQ+VsVZjCftoB+-"
        "9)0Nri1yt`>dn^>DZbZob7N;cvFMM7K(W8${TplNK2ae8Y22dx3xK>voo$b=Q!Lz7p36=J~3#i`J8*UZuoxikHuF"
        "!0#39cWm~!EcX8LtXXs_(tlcSv~S1D7k-%LC@8vE?syxQvvogHdx=w@znAOj{s-R}55W"
    ),
    "IQ1_S": (
        "c-"
        "n1M+iu%N5bfN^CApR?^g>%&SvKIpi5=v3)Y<}EpnY&__#^t4MQosXD4Ze)&|k=zU6NMXJ_y>&>|D+{GyIB0xYmv<"
        "UPa;g3X9Hn*MzN5mrNS5TA0^<e>2{%V(6^LqE@Z(_knSnLbR6Ngt!x;ISzWWim;a2<MfA$V7|S#R}yg)$RtIv5B%"
        "cSUXr-MRYz$~ip4AB6Zhi>UAfo1eQqh6O7wh5Vch8sFFY^`NXUcO6S2)qqC9x56>fxE-gsqCY|<guU@IjqY2rFrt"
        "zH54`lACe6@yimT~a>mnMt@*OBG9oz#Z8#-@px15Wi0vWNv@6&68(n`58M9i+e^4U9-"
        "o|j?6ZJP=d)%2Qxky3Ubs;pWA{4vKinQw+>ufv&Dk<rmH0G>WOHRn8w{B&w=ZvRLc=qSkPZ$41GZor)LfU9HFR=>"
        "j;)R3M+2g=RMkF;o-l-"
        "?=~R#86LZW5<+)$GhF4+6TOd@Ap6|I!uMMXcI_}AsG}xn&<b@9HfVw$`q`;U3$fNtyTucKqlbeXxPzTJKFIC|8o4"
        "s-"
        "^S=Y12_QM1;Dzh0YL}~nnq81MbtH}zN=C3hIjVK*x^^@&M?h<*q?NiIFU{&AEOd*eoV^=9yk)PywX4NbTeM^z!%E"
        "~RC-}MicST(AQ5y;$l699{F60=NrIIZOg_o0|wnk3Dwo?0^DVFlI2ou67^-"
        "@W$4+Tq<Z`+bC?Q3_4H^m)a!<UYm4BZwh9&|ifA8C2=lCvI5Ua19NJeJ0jrdbuP5D88Is%!a$tC;><{E=$NFXF8p"
        "SY-rVpiCUNZu%x<wfxm)5l73N%X0MXe3zvZNd@f&uCQ8G!RN!B$psmDGkg#IeS#QBkzJoh;n=<#oU!NO%Gl-"
        "hm8(%llCf9=0-p_@!gU?HiV5_V0=Y6dLNB-QQ7h{wr024&LyGn625GpEdZ5eAK<*J&9az*m<JT~Rr<Qa*Q;zR0$M"
        "$ih?lsU&R%3!SJI)Y8LQn5a$qRJiWc`sbLl4wtcx871f{dQQ*a}&EWxmYrExX0|QOHtPv1y;CUhjPxNA0I9yp75z"
        "^XVmLi!bK1@a5F-"
        "Z8R{6Z;H1utx7WuGthbKt)rss4M)ixxAS0|AumaD{`wF0zLMFp9khf8F!!boTN`I^P^JF=^dwDDe&u{`!GzXT7L|"
        "8?lqDMlCg|yjQAh%XAf=^KA6>U4k36rJlU{sG_WnHsYqy7on_N$G?k)MT-3LN0Cd{B}_<bWGe-"
        "h6+R{6E!s%ic`B>!PB5q126q~B?PVi*gt%r|tygO{Qk_J-lW=dHO=`5h1Hx%eW1ImUdNn+xrt`t8MJBI`5jvR+^"
    ),
}


def _codes(text: str) -> list[int]:
    """base85(zlib(varint deltas)) -> the ascending point codes."""
    raw = zlib.decompress(base64.b85decode(text))
    codes, cur, acc, shift = [], 0, 0, 0
    for byte in raw:
        acc |= (byte & 127) << shift
        shift += 7
        if byte < 128:              # the last byte of a varint
            cur += acc
            codes.append(cur)
            acc, shift = 0, 0
    return codes


def grid(name: str) -> torch.Tensor:
    """The grid type ``name``'s blocks index: [points, coordinates], uint8 levels (int8 for IQ1)."""
    return _decoded_grid(_GRID_OF.get(name, name))


@functools.cache
def _decoded_grid(name: str) -> torch.Tensor:
    levels, width = _LEVELS[name]
    bits = 2 if len(levels) <= 4 else 3
    codes = torch.tensor(_codes(_GRIDS[name]), dtype=torch.int64)
    index = (codes[:, None] >> (bits * torch.arange(width))) & ((1 << bits) - 1)
    dtype = torch.int8 if min(levels) < 0 else torch.uint8
    return torch.tensor(levels, dtype=dtype)[index].contiguous()


@functools.cache
def _grid_f32(name: str) -> torch.Tensor:
    return grid(name).float()


def set_scales(name: str, blocks, halves):
    """numpy uint8 blocks [n, bytes] of type ``name`` with each block's fp16 scale set to the bit
    patterns ``halves`` (uint16 [n]), where the type keeps it: bytes 0-1, or for IQ1_M the top
    nibbles of its four scale words (for tests and benchmarks that write blocks of their own)."""
    if name == "IQ1_M":
        words = blocks[:, 48:56].copy().view("<u2")
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((halves >> (4 * k)) & 0xF) << 12)
        blocks[:, 48:56] = words.view("u1")
    else:
        blocks[:, 0:2] = halves.astype("<u2").view("u1").reshape(-1, 2)
    return blocks


def row_bytes(type_name: str | int, cols: int) -> int:
    _, bs, bb = IQ_TYPES[_type_id(type_name)]
    if cols % bs:
        raise ValueError(f"{cols} weights per row are not whole {bs}-blocks")
    return cols // bs * bb


def _type_id(t: str | int) -> int:
    if isinstance(t, int) and t in IQ_TYPES:
        return t
    if t in NAMES:
        return NAMES[t]
    raise ValueError(f"ggml type {t!r} is not an i-quant this module dequantizes ({', '.join(NAMES)})")


# ---------------------------------------------------------------------------------------
# torch reference (and fallback): ggml's formulas on whole tensors, float32, in ggml's order


def _f16(b: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 2] -> float32 [...] (little-endian IEEE half)."""
    return b.contiguous().view(torch.float16).float()[..., 0]


def _le(b: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n] -> int64 [...]: the little-endian unsigned integer of n bytes."""
    b = b.long()
    return sum(b[..., i] << (8 * i) for i in range(b.shape[-1]))


def _sign_bits(s: torch.Tensor) -> torch.Tensor:
    """8-bit sign masks int [...] -> float32 [..., 8]: -1 where bit j is set, else 1."""
    return 1.0 - 2.0 * ((s[..., None] >> torch.arange(8)) & 1).float()


def _nibbles(b: torch.Tensor) -> torch.Tensor:
    """uint8 [nb, n] -> int [nb, 2 n]: low then high nibble of each byte."""
    b = b.long()
    return torch.stack([b & 15, b >> 4], dim=-1).flatten(1)


def _iq2_xxs(b: torch.Tensor) -> torch.Tensor:
    # per 32 weights: 4 grid bytes, then a word of 4 x 7 sign bits and the 4-bit scale on top
    nb = b.shape[0]
    g = b[:, 2:66].reshape(nb, 8, 8)
    aux = _le(g[:, :, 4:8])                                             # [nb, 8]
    db = _f16(b[:, 0:2])[:, None] * (0.5 + (aux >> 28).float()) * 0.25  # d (0.5 + s) / 4
    signs = KSIGNS[(aux[:, :, None] >> torch.tensor([0, 7, 14, 21])) & 127]
    vals = _grid_f32("IQ2_XXS")[g[:, :, 0:4].long()]                  # [nb, 8, 4, 8]
    return (db[:, :, None, None] * vals * _sign_bits(signs)).reshape(nb, QK_K)


def _iq2_xs(b: torch.Tensor) -> torch.Tensor:
    # 32 words: 9-bit grid index, 7 sign bits; a 4-bit scale per 16 weights
    nb = b.shape[0]
    q = _le(b[:, 2:66].reshape(nb, 32, 2))
    db = _f16(b[:, 0:2])[:, None] * (0.5 + _nibbles(b[:, 66:74]).float()) * 0.25   # [nb, 16]
    vals = _grid_f32("IQ2_XS")[q & 511]                                             # [nb, 32, 8]
    return (db.repeat_interleave(2, 1)[:, :, None] * vals * _sign_bits(KSIGNS[q >> 9])).reshape(nb, QK_K)


def _iq2_s(b: torch.Tensor) -> torch.Tensor:
    # 32 low index bytes, 32 sign bytes (all 8 signs stored), 8 bytes of 2 high index bits, scales
    nb = b.shape[0]
    qh = b[:, 66:74].long()
    hi = (qh[:, :, None] >> torch.tensor([0, 2, 4, 6])) & 3                         # [nb, 8, 4]
    idx = b[:, 2:34].long() | (hi.reshape(nb, 32) << 8)
    db = _f16(b[:, 0:2])[:, None] * (0.5 + _nibbles(b[:, 74:82]).float()) * 0.25
    vals = _grid_f32("IQ2_S")[idx]
    return (db.repeat_interleave(2, 1)[:, :, None] * vals * _sign_bits(b[:, 34:66].long())).reshape(nb, QK_K)


def _iq3_xxs(b: torch.Tensor) -> torch.Tensor:
    # 64 grid bytes (4 weights each), then per 32 weights a word of 4 x 7 sign bits + scale
    nb = b.shape[0]
    aux = _le(b[:, 66:98].reshape(nb, 8, 4))
    db = _f16(b[:, 0:2])[:, None] * (0.5 + (aux >> 28).float()) * 0.5
    signs = KSIGNS[(aux[:, :, None] >> torch.tensor([0, 7, 14, 21])) & 127]       # [nb, 8, 4]
    vals = _grid_f32("IQ3_XXS")[b[:, 2:66].long()].reshape(nb, 8, 4, 8)
    return (db[:, :, None, None] * vals * _sign_bits(signs)).reshape(nb, QK_K)


def _iq3_s(b: torch.Tensor) -> torch.Tensor:
    # 64 low index bytes, 8 bytes of ninth index bits, 32 sign bytes, 4-bit scales d (1 + 2 s)
    nb = b.shape[0]
    hi = (b[:, 66:74].long()[:, :, None] >> torch.arange(8)) & 1                    # [nb, 8, 8]
    idx = b[:, 2:66].long() | (hi.reshape(nb, 64) << 8)
    db = _f16(b[:, 0:2])[:, None] * (1 + 2 * _nibbles(b[:, 106:110])).float()       # [nb, 8]
    vals = _grid_f32("IQ3_S")[idx].reshape(nb, 8, 4, 8)
    return (db[:, :, None, None] * vals * _sign_bits(b[:, 74:106].long()).reshape(nb, 8, 4, 8)).reshape(nb, QK_K)


def _iq1_s(b: torch.Tensor) -> torch.Tensor:
    # 32 low index bytes; per 32 weights a word: 4 x 3 high index bits, a 3-bit scale, the delta's sign
    nb = b.shape[0]
    qh = _le(b[:, 34:50].reshape(nb, 8, 2))                                          # [nb, 8]
    dl = _f16(b[:, 0:2])[:, None] * (2 * ((qh >> 12) & 7) + 1).float()
    delta = torch.where(qh & 0x8000 != 0, -IQ1S_DELTA, IQ1S_DELTA)
    hi = (qh[:, :, None] >> torch.tensor([0, 3, 6, 9])) & 7
    idx = b[:, 2:34].long().reshape(nb, 8, 4) | (hi << 8)
    vals = _grid_f32("IQ1_S")[idx] + delta[:, :, None, None]                       # grid + delta, then x dl
    return (dl[:, :, None, None] * vals).reshape(nb, QK_K)


def _iq1_m_scale(sc: torch.Tensor) -> torch.Tensor:
    """IQ1_M: the block's fp16 scale from the top nibble of each of its 4 scale words."""
    bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    return bits.to(torch.int16).view(torch.float16).float()      # int16: same bits, no overflow


def _iq1_m(b: torch.Tensor) -> torch.Tensor:
    # 32 low index bytes, 16 bytes: a nibble per index (3 high bits + the delta's sign), 4 scale words
    nb = b.shape[0]
    sc = _le(b[:, 48:56].reshape(nb, 4, 2))                                          # [nb, 4]
    s3 = (sc[:, :, None] >> torch.tensor([0, 3, 6, 9])) & 7                          # 3-bit scale per 16 weights
    dl = _iq1_m_scale(sc)[:, None] * (2 * s3.reshape(nb, 16) + 1).float()
    h = _nibbles(b[:, 32:48])                                                        # [nb, 32]
    idx = b[:, 0:32].long() | ((h & 7) << 8)
    delta = torch.where(h & 8 != 0, -IQ1S_DELTA, IQ1S_DELTA)
    vals = _grid_f32("IQ1_S")[idx] + delta[:, :, None]                              # [nb, 32, 8]
    return (dl.repeat_interleave(2, 1)[:, :, None] * vals).reshape(nb, QK_K)


_TORCH = {"IQ2_XXS": _iq2_xxs, "IQ2_XS": _iq2_xs, "IQ2_S": _iq2_s, "IQ3_XXS": _iq3_xxs, "IQ3_S": _iq3_s,
          "IQ1_S": _iq1_s, "IQ1_M": _iq1_m}


def _check(type_name, blocks: torch.Tensor, cols: int) -> tuple[int, str]:
    tid = _type_id(type_name)
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != row_bytes(tid, cols):
        raise ValueError(f"{IQ_TYPES[tid][0]} blocks {tuple(blocks.shape)} {blocks.dtype} do not hold rows of {cols}")
    return tid, IQ_TYPES[tid][0]


def torch_dequantize_rows(type_name: str | int, blocks: torch.Tensor, cols: int) -> torch.Tensor:
    """uint8 [rows, row_bytes] -> float32 [rows, cols] by the torch formulas (no native code)."""
    tid, name = _check(type_name, blocks, cols)
    bb = IQ_TYPES[tid][2]
    flat = blocks.contiguous().view(-1, bb)
    return _TORCH[name](flat).view(blocks.shape[0], cols)


# ---------------------------------------------------------------------------------------
# the library

_LIB: ctypes.CDLL | None = None
_TRIED = False


def build(cache_dir: Path | None = None, cc: str | None = None, march: str | None = None,
          openmp: bool = True) -> Path:
    """Compile the library unless cached; its path. RuntimeError with the compiler's message."""
    return cpu_native.build(cache_dir, cc, march, openmp, source=SOURCE, headers=HEADERS, extra=EXTRA_FLAGS)[0]


def load(march: str | None = None) -> ctypes.CDLL:
    """Build (or find cached) and load the library for a target ("native", "x86-64", ...)."""
    return _bind(ctypes.CDLL(str(cpu_native.build_any(march, source=SOURCE, headers=HEADERS, extra=EXTRA_FLAGS))))


def _bind(so):
    """``so`` (this library: a ctypes one, or another build run elsewhere, e.g. an emulated
    CPU's) with its entry point's argument types set."""
    p, i, lg = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    so.iq_dequant.argtypes = [i, p, lg, lg, lg, p, lg, p, i, i]
    so.iq_dequant.restype = i
    so.iq_gemm.argtypes = [i, p, i, i, p, lg, lg, p, lg, p, i, i]
    so.iq_gemm.restype = i
    so.iq_isa.argtypes = []
    so.iq_isa.restype = ctypes.c_char_p
    return so


def lib() -> ctypes.CDLL | None:
    """The library, built and loaded once per process; None where it cannot be (then the torch
    dequantizer runs). ``DUET_KERNELS=reference`` keeps it unloaded."""
    global _LIB, _TRIED
    if not _TRIED:
        _TRIED = True
        _LIB = cpu_native.try_load(load, "duet i-quant kernels", "the torch dequantizer")
    return _LIB


def native_dequantize_rows(type_name: str | int, blocks: torch.Tensor, cols: int, out: torch.Tensor | None = None,
                           so: ctypes.CDLL | None = None) -> torch.Tensor:
    """uint8 [rows, row_bytes] (rows contiguous, any row stride) -> float32 [rows, cols] by the C
    library ``so`` (default: ``lib()``; RuntimeError where there is none). ``out``: a float32 or
    bf16 [rows, cols] tensor with contiguous rows to fill (a reused tile buffer; bf16: each
    weight rounded to nearest even as it is written, as ``.to(torch.bfloat16)`` rounds)."""
    tid, name = _check(type_name, blocks, cols)
    so = so or lib()
    if so is None:
        raise RuntimeError("the i-quant library is not available")
    rows = blocks.shape[0]
    if blocks.stride(1) != 1:
        blocks = blocks.contiguous()
    if out is None:
        out = torch.empty(rows, cols, dtype=torch.float32)
    elif out.dtype not in (torch.float32, torch.bfloat16) or tuple(out.shape) != (rows, cols) or out.stride(1) != 1:
        raise ValueError(f"out must be float32 or bf16 [{rows}, {cols}] with contiguous rows")
    g = grid(name)
    rc = so.iq_dequant(tid, blocks.data_ptr(), blocks.stride(0), rows, cols, out.data_ptr(), out.stride(0),
                       g.data_ptr(), torch.get_num_threads(), int(out.dtype == torch.bfloat16))
    if rc:
        raise ValueError(f"iq_dequant refused {name} rows of {cols} ({rc})")
    return out


def dequantize_rows(type_name: str | int, blocks: torch.Tensor, cols: int,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """The weights ``blocks`` (uint8 [rows, row_bytes] of i-quant ``type_name``, a name or ggml
    type id) stand for: float32 [rows, cols], bit for bit ggml's. Native where the library
    loads, else the torch formulas; ``out`` as ``native_dequantize_rows`` takes it (a bf16 one
    gets those weights rounded to bf16)."""
    if lib() is not None:
        return native_dequantize_rows(type_name, blocks, cols, out)
    y = torch_dequantize_rows(type_name, blocks, cols)
    return y if out is None else out.copy_(y)


@contextmanager
def variant(march: str):
    """Within the block the library built for ``march`` ("haswell", "x86-64", ...) runs every
    call (as kernels.kquant.variant swaps its own). RuntimeError where that target does not build."""
    global _LIB, _TRIED
    lib()
    so = load(march)
    saved = (_LIB, _TRIED)
    _LIB, _TRIED = so, True
    try:
        yield so
    finally:
        _LIB, _TRIED = saved


def isa() -> str | None:
    """The path of the native dot product: "avx2" or "scalar" (plain C); None when not loaded."""
    so = lib()
    return so.iq_isa().decode() if so is not None else None


def native_linear(type_name: str | int, x: torch.Tensor, blocks: torch.Tensor, cols: int, act: int,
                  so: ctypes.CDLL | None = None) -> torch.Tensor:
    """x float32 [M, cols] (M <= MAX_ROWS) times the i-quant rows ``blocks`` (uint8 [n, row_bytes],
    rows contiguous) -> float32 [M, n], by integer block dot products (kernels/csrc/iquant_dot.h):
    the activations rounded to llama.cpp's Q8_K blocks, ``act`` 8 (its codes) or 16 (plus a
    second code for the remainder), as kernels/kquant.py's K-quants. RuntimeError without the
    library (``so``: default ``lib()``)."""
    tid, name = _check(type_name, blocks, cols)
    so = so or lib()
    if so is None:
        raise RuntimeError("the i-quant library is not available")
    xf = x.to(torch.float32).contiguous()
    m = xf.shape[0]
    if xf.dim() != 2 or xf.shape[1] != cols or not 1 <= m <= MAX_ROWS or act not in DOT_ACT_BITS:
        raise ValueError(f"iq_gemm takes 1..{MAX_ROWS} rows of {cols} at 8 or 16 bits, not {tuple(x.shape)} at {act}")
    if blocks.stride(1) != 1:
        blocks = blocks.contiguous()
    n = blocks.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)
    g = grid(name)
    rc = so.iq_gemm(tid, xf.data_ptr(), m, cols, blocks.data_ptr(), blocks.stride(0), n, y.data_ptr(), n,
                    g.data_ptr(), torch.get_num_threads(), act)
    if rc:
        raise MemoryError("iq_gemm: out of memory") if rc == 1 else ValueError(f"iq_gemm refused {name} ({rc})")
    return y
