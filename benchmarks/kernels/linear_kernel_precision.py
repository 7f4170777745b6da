"""One-off GPU probe behind benchmarks/gpu_kernel_checks.md: the linear-attention kernels' fp32 error per tl.dot
precision against a float64 einsum. Run as `python3 benchmarks/kernels/linear_kernel_precision.py`."""
import torch, triton
from asr_attention.attention.kernels import linear_attention as la
print("allow_tf32", torch.backends.cuda.matmul.allow_tf32, getattr(torch.backends.cuda.matmul, "fp32_precision", None), flush=True)
def run(pq, pk, v, precision, block):
    b, t, h, f = pq.shape; hd = v.shape[-1]
    out = torch.empty(b, t, h, hd, device=v.device, dtype=v.dtype)
    S = torch.empty(b*h, f, hd, device="cuda"); Z = torch.empty(b*h, f, device="cuda")
    la._state_kernel[(b*h, 1)](pk, v, S, Z, *pk.stride(), *v.stride(), t, h, triton.cdiv(t, block)*block, F=f, HD=hd, BLOCK_T=block, ATOMIC=False, PRECISION=precision, num_warps=4)
    la._output_kernel[(b*h, triton.cdiv(t, block))](pq, S, Z, out, *pq.stride(), *out.stride()[:3], t, h, 1e-6, F=f, HD=hd, BLOCK_T=block, PRECISION=precision, num_warps=4)
    return out, S
for (B,T,H,HD) in [(2,37,3,16),(16,1000,16,64)]:
    g = torch.Generator().manual_seed(0)
    pq, pk, v = (torch.rand(B,T,H,HD, generator=g).cuda() for _ in range(3))
    d = [x.double() for x in (pq,pk,v)]
    S64 = torch.einsum("bthf,bthd->bhfd", d[1], d[2])
    ref = torch.einsum("bthf,bhfd->bthd", d[0], S64) / (torch.einsum("bthf,bhf->bth", d[0], d[1].sum(1))[..., None] + 1e-6)
    for prec in ("ieee", "tf32", "tf32x3"):
        for block in (16, 64):
            try:
                out, S = run(pq, pk, v, prec, block)
                es = ((S.view(B,H,HD,HD).double()-S64).norm()/S64.norm()).item()
                eo = ((out.double()-ref).norm()/ref.norm()).item()
                print(B,T,H,HD, prec, block, f"state err {es:.2e} out err {eo:.2e}", flush=True)
            except Exception as e:
                print(B,T,H,HD, prec, block, "FAILED", type(e).__name__, str(e)[:200], flush=True)
    out = la.linear_attention(pq, pk, v, 1e-6)
    print("entry", B,T,H,HD, f"{((out.double()-ref).norm()/ref.norm()).item():.2e}", flush=True)
