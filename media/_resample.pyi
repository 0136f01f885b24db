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
