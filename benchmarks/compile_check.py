"""Does chunk_delta_rule run inside torch.compile(fullgraph=True), forward and backward? (GPU)"""

import torch

from deltanet.ops import chunk_delta_rule


def layer(q, k, v, beta):
    o, _ = chunk_delta_rule(torch.nn.functional.silu(q), k, v, beta.sigmoid(), use_qk_l2norm=True)
    return (o * 2).sum()


q, k, v = (torch.randn(2, 256, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
           for _ in range(3))
beta = torch.randn(2, 256, 4, device="cuda", dtype=torch.bfloat16, requires_grad=True)
compiled = torch.compile(layer, fullgraph=True)
loss = compiled(q, k, v, beta)
loss.backward()
eager = layer(q, k, v, beta)
print("torch.compile fullgraph OK; loss compiled", loss.item(), "eager", eager.item())
