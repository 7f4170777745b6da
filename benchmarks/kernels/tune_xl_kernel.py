"""One-off GPU probe behind benchmarks/gpu_kernel_checks.md (XL kernel tile shapes, bf16, B16 H16 T1000 hd64).
Run on the device machine as `python3 benchmarks/kernels/tune_xl_kernel.py`, exactly as committed here."""
import torch, torch.nn.functional as F
from asr_attention.attention.kernels.xl_attention import xl_attention
from asr_attention.attention.positions import skewed_scores, key_padding_to_sdpa
from asr_attention.bench.layers import time_ms
torch.manual_seed(0)
B,H,T,hd=16,16,1000,64
for dtype in (torch.bfloat16,):
    qkv=torch.randn(B,T,3*H*hd,device="cuda",dtype=dtype)
    q,k,v=(x.view(B,T,H,hd).transpose(1,2) for x in qkv.split(H*hd,-1))
    P=torch.randn(2*T-1,H,hd,device="cuda",dtype=dtype); u=torch.randn(H,hd,device="cuda"); vb=torch.randn(H,hd,device="cuda")
    pad=torch.zeros(B,T,dtype=torch.bool,device="cuda"); pad[3,700:]=True
    s=hd**-0.5
    def sdpa():
        bias=skewed_scores((q+vb[None,:,None,:].to(dtype))*s, P.permute(1,2,0)[None])
        return F.scaled_dot_product_attention(q+u[None,:,None,:].to(dtype),k,v,attn_mask=key_padding_to_sdpa(pad,bias),scale=s).transpose(1,2)
    with torch.no_grad():
        ref=sdpa(); ref64=None
        qd,kd,vd,Pd=(x.double() for x in (q,k,v,P))
        b64=skewed_scores((qd+vb.double()[None,:,None,:])*s, Pd.permute(1,2,0)[None])
        ref64=F.scaled_dot_product_attention(qd+u.double()[None,:,None,:],kd,vd,attn_mask=key_padding_to_sdpa(pad,b64),scale=s).transpose(1,2)
        del b64
        e_sdpa=((ref.double()-ref64).norm()/ref64.norm()).item()
        t_sdpa=time_ms(sdpa)
        print(f"{dtype} sdpa path: {t_sdpa:.3f} ms, err vs fp64 {e_sdpa:.2e}", flush=True)
        for blk,w,st in [(64,4,2),(64,4,1),(64,2,2),(32,2,2),(32,2,1),(32,4,1)]:
            try:
                out=xl_attention(q,k,v,P,u,vb,pad,s,block=blk,num_warps=w,num_stages=st)
                e=((out.double()-ref64).norm()/ref64.norm()).item()
                t=time_ms(lambda: xl_attention(q,k,v,P,u,vb,pad,s,block=blk,num_warps=w,num_stages=st))
                print(f"{dtype} kernel block {blk} warps {w} stages {st}: {t:.3f} ms ({t_sdpa/t:.2f}x sdpa path), err vs fp64 {e:.2e}", flush=True)
            except Exception as ex:
                print(f"{dtype} kernel block {blk} warps {w} stages {st}: FAILED {type(ex).__name__}: {str(ex)[:300]}", flush=True)
