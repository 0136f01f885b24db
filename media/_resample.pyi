from typing_extensions import Buffer

HAVE_AVX2: int

def resize(
    src: Buffer,
    dst: Buffer,
    ypos: Buffer,
    yweights: Buffer,
    ytaps: int,
    xpos: Buffer,
    xweights: Buffer,
    xtaps: int,
    simd: bool = True,
) -> None: ...

_Filter = tuple[Buffer, Buffer, int, Buffer, Buffer, int]

def tile(
    src_y: Buffer,
    src_u: Buffer,
    src_v: Buffer,
    cell_y: Buffer,
    cell_u: Buffer,
    cell_v: Buffer,
    x: int,
    y: int,
    w: int,
    h: int,
    cx: int,
    cy: int,
    luma: _Filter,
    chroma: _Filter,
    simd: bool = True,
) -> None: ...
