#!/usr/bin/env python3
"""Writes one C++ file per kernel source: emu.h, common.cuh, the .cu file, and for each
`extern "C" __global__` kernel a caller that unpacks cuLaunchKernel's `void**` params,
registered by name at load time."""
import re, sys, pathlib

src_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
common = (src_dir / "common.cuh").read_text()
for cu in sorted(src_dir.glob("*.cu")):
    text = cu.read_text()
    callers, regs = [], []
    for m in re.finditer(r'extern "C" __global__ void (\w+)\((.*?)\)\s*\{', text, re.S):
        name, params = m.group(1), [p.strip() for p in m.group(2).split(",") if p.strip()]
        args = []
        for i, p in enumerate(params):
            ty = re.sub(r"\s*\b\w+$", "", p).strip()
            args.append(f"*({ty}*)p[{i}]")
        callers.append(f"static void call_{name}(void** p) {{ {name}({', '.join(args)}); }}")
        regs.append(f'    emu_register("{name}", call_{name});')
    out = [
        '#include "emu.h"',
        common,
        f"// ---- {cu.name} ----",
        text,
        *callers,
        "namespace {",
        "struct Reg { Reg() {",
        *regs,
        "} } reg;",
        "}",
    ]
    (out_dir / (cu.stem + ".cpp")).write_text("\n".join(out) + "\n")
    print(f"{cu.name}: {len(regs)} kernels")
