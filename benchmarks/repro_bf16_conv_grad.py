"""How often oneDNN's bfloat16 Conv3d weight gradient comes out non-finite, by feature-map size (CPU).

The decoder's image path (``segvolpipe/models/detail.py``) once went down to 2×2×2 maps on small grids, and a
training run turned to NaN at its first step; ``level_strides`` now stops before an axis falls below 3 voxels. This
counts, for each case, the calls out of ``--repeats`` (fresh random input and output gradient, 3×3×3 kernel, padding
1, bf16 autocast; random numbers freed just before, so recycled memory holds garbage as it does in a training step)
whose weight gradient holds an inf or NaN:

`.venv/bin/python benchmarks/repro_bf16_conv_grad.py [--repeats 300] [--threads 1 2]`
"""

import argparse

import torch

# (map z, y, x), in channels, out channels, stride, batch: the 2×2×2 case the tests' grid made, and the real
# 48×24×24 grid's deepest levels
CASES = [((2, 2, 2), 64, 32, 1, 1), ((2, 2, 2), 64, 32, 1, 2), ((3, 3, 3), 64, 32, 1, 1), ((4, 4, 4), 64, 32, 1, 1),
         ((6, 3, 3), 128, 256, (2, 1, 1), 2), ((6, 3, 3), 256, 128, 1, 2), ((3, 3, 3), 256, 256, 1, 2),
         ((12, 6, 6), 64, 128, 2, 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    torch.manual_seed(0)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape, cin, cout, stride, batch in CASES:
            conv = torch.nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
            bad = 0
            for _ in range(args.repeats):
                # leave non-zero garbage in freed memory, as a training step's earlier tensors do
                del_me = torch.randn(4 * batch * cin * 27 * 8)
                del del_me
                conv.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = conv(torch.randn(batch, cin, *shape))
                y.backward(torch.randn_like(y) * 1e-4)
                bad += not bool(torch.isfinite(conv.weight.grad).all())
            print(f"threads {threads}  map {shape}  {cin} → {cout}  stride {stride}  batch {batch}: "
                  f"{bad} of {args.repeats} non-finite", flush=True)


if __name__ == "__main__":
    main()
