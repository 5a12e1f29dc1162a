"""DTCA speed: the token-patch alignment solvers (eqs 13–21) and one training step.

    .venv/bin/python benchmarks/dtca_speed.py                       # CPU, tiny encoders
    .venv/bin/python benchmarks/dtca_speed.py --device cuda --real  # GPU, roberta-base + ViT-base (weights needed)

Prints ms per call for: exact EMD per sentence (the paper variant's solver, `ot.emd` on CPU), POT's
batched log-Sinkhorn (an entropic alternative), the released code's IPOT, and a full forward/backward
of the model at batch 4 (fp32, and bf16 autocast on CUDA), plus peak GPU memory.
"""

from __future__ import annotations

import argparse
import time

import torch


def _time(fn, repeat: int, device: str) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / repeat


def bench_ot(device: str, batch: int, tokens: int, patches: int, dim: int, repeat: int) -> None:
    import ot

    from mmbench.papers.dtca.alignment import eq15_cost, ipot_loss, wasserstein_loss

    text = torch.randn(batch, tokens + 2, dim, device=device, requires_grad=True)
    image = torch.randn(batch, patches, dim, device=device, requires_grad=True)
    mask = torch.zeros(batch, tokens + 2, dtype=torch.bool, device=device)
    mask[:, 1 : tokens + 1] = True

    def emd():
        wasserstein_loss(text, image, mask, cost="unit").backward()  # the paper variant's default

    def ipot():
        ipot_loss(text, image, mask).backward()

    def sinkhorn():
        cost = torch.stack([eq15_cost(text[b, 1 : tokens + 1], image[b], "unit") for b in range(batch)])
        res = ot.solve_batch(M=cost, reg=0.01, method="log_sinkhorn", grad="envelope")
        res.value_linear.mean().backward()

    print(f"OT, batch {batch}, {tokens} tokens x {patches} patches, d={dim}, {device}:")
    for name, fn in (("exact EMD (ot.emd per sentence)", emd), ("IPOT, 50 iterations (released)", ipot),
                     ("log-Sinkhorn reg 0.01 (ot.solve_batch)", sinkhorn)):
        try:
            print(f"  {name:42s} {_time(fn, repeat, device):8.2f} ms / batch")
        except Exception as exc:  # an optional solver failing must not hide the others
            print(f"  {name:42s} failed: {type(exc).__name__}: {exc}")


def bench_step(device: str, real: bool, repeat: int) -> None:
    from mmbench.papers.dtca.method import DTCAConfig
    from mmbench.papers.dtca.encoders import load_image, load_text
    from mmbench.papers.dtca.model import DTCAModel

    config = DTCAConfig(tiny_encoders=not real)
    text_encoder, _ = load_text(config.text_encoder, config.tiny_encoders)
    image = load_image(config.image_encoder, config.tiny_encoders)
    model = DTCAModel(config, text_encoder, image.model, image.hidden_size, image.prefix_tokens).to(device)
    b, length, words = 4, 40, 16
    vocab = text_encoder.config.vocab_size
    token_labels = torch.full((b, length), -100)
    token_labels[:, 1 : words + 1] = torch.randint(0, 5, (b, words))
    batch = {"input_ids": torch.randint(5, vocab, (b, length)), "attention_mask": torch.ones(b, length, dtype=torch.long),
             "token_labels": token_labels, "word_index": torch.arange(1, words + 1).repeat(b, 1),
             "word_tags": token_labels[:, 1 : words + 1].clone(), "word_mask": torch.ones(b, words, dtype=torch.bool),
             "ot_text_mask": torch.ones(b, length, dtype=torch.bool),
             "pixel_values": torch.randn(b, 3, image.image_size, image.image_size)}
    batch["ot_text_mask"][:, [0, -1]] = False
    batch = {k: v.to(device) for k, v in batch.items()}

    def step(dtype=None):
        def run():
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                loss = model(batch)["loss"]
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    label = "roberta-base + ViT-base" if real else "tiny encoders"
    print(f"train step, batch 4, {label}, {device}: fp32 {_time(step(), repeat, device):.1f} ms")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        print(f"  bf16 autocast {_time(step(torch.bfloat16), repeat, device):.1f} ms, "
              f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--real", action="store_true", help="roberta-base + ViT-base (needs their weights)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bench_ot(args.device, batch=4, tokens=58, patches=196, dim=768, repeat=args.repeat)
    bench_step(args.device, args.real, args.repeat)


if __name__ == "__main__":
    main()
