"""The chunked full- and sampled-softmax cross-entropies equal the materialised ones, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from recsieve.training.softmax import full_softmax_ce, sampled_softmax_ce


def _problem(seed: int, rows: int, items: int):
    """A generator, ``h`` (rows x 16), a table (items x 16), both requiring grad, and targets."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, 16, generator=g, requires_grad=True)
    table = (torch.randn(items, 16, generator=g) * 0.3).requires_grad_()
    return g, h, table, torch.randint(0, items, (rows,), generator=g)


@pytest.mark.parametrize("chunk", [1, 7, 256, 10_000])
def test_value_and_gradients_match_cross_entropy(chunk: int) -> None:
    _, h, table, targets = _problem(0, 300, 53)
    ref = F.cross_entropy(h @ table.T, targets)
    gh, gt = torch.autograd.grad(ref * 3.0, (h, table))
    got = full_softmax_ce(h, table, targets, chunk=chunk)
    ch, ct = torch.autograd.grad(got * 3.0, (h, table))  # the upstream gradient is honoured
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(ch, gh, atol=1e-6)
    assert torch.allclose(ct, gt, atol=1e-6)


def test_gradient_flows_through_a_table_built_from_parameters_under_autocast() -> None:
    torch.manual_seed(0)
    tower = torch.nn.Linear(8, 4)
    text = torch.randn(20, 8)
    h = torch.randn(30, 4, requires_grad=True)
    targets = torch.randint(0, 20, (30,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = full_softmax_ce(h.to(torch.bfloat16), tower(text), targets)
    loss.backward()
    ref_tower = torch.nn.Linear(8, 4)
    ref_tower.load_state_dict(tower.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        table = ref_tower(text)
    ref = F.cross_entropy(h.detach().to(torch.bfloat16).float() @ table.float().T, targets)
    ref.backward()
    assert loss.dtype == torch.float32 and torch.allclose(loss, ref, atol=1e-4)
    assert torch.allclose(tower.weight.grad, ref_tower.weight.grad, atol=1e-3)


@pytest.mark.parametrize("chunk", [7, 256])
def test_bf16_products_give_the_loss_of_bf16_logits_and_near_fp32_gradients(chunk: int) -> None:
    _, h, table, targets = _problem(2, 300, 53)
    g32 = torch.autograd.grad(full_softmax_ce(h, table, targets, chunk=chunk), (h, table))
    got = full_softmax_ce(h, table, targets, chunk=chunk, bf16=True)
    g16 = torch.autograd.grad(got, (h, table))
    ref = F.cross_entropy((h.bfloat16() @ table.bfloat16().T).float(), targets)
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-4)
    for a, b in zip(g16, g32, strict=True):
        assert a.dtype == torch.float32
        assert not torch.equal(a, b)  # the products did run in bf16
        assert (a - b).norm() < 1e-2 * b.norm()


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="do not multiply"):
        full_softmax_ce(torch.zeros(3, 4), torch.zeros(5, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        full_softmax_ce(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_sampled_softmax_matches_the_materialised_logq_corrected_cross_entropy(chunk: int) -> None:
    g, h, table, targets = _problem(1, 200, 40)
    q = torch.rand(40, generator=g) + 0.1
    q = q / q.sum()
    negs = torch.multinomial(q, 25, replacement=True, generator=g)  # repeats and targets among them
    assert (negs[None, :] == targets[:, None]).any() and negs.unique().numel() < 25
    log_q = torch.log(q * 25)
    pos = (h * table[targets]).sum(1) - log_q[targets]
    neg = (h @ table[negs].T - log_q[negs]).masked_fill(negs[None, :] == targets[:, None], float("-inf"))
    ref = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros_like(targets))
    gh, gt = torch.autograd.grad(ref * 2.0, (h, table))
    got = sampled_softmax_ce(h, table, targets, negs, log_q, chunk=chunk)
    ch, ct = torch.autograd.grad(got * 2.0, (h, table))
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(ch, gh, atol=1e-6)
    assert torch.allclose(ct, gt, atol=1e-6)
    with pytest.raises(ValueError, match="log_q"):
        sampled_softmax_ce(h, table, targets, negs, log_q[:-1])


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_excluded_items_leave_the_softmax_in_value_and_gradients(chunk: int) -> None:
    g, h, table, targets = _problem(2, 120, 30)
    mask = torch.rand(120, 30, generator=g) < 0.3
    mask[torch.arange(120), targets] = False  # a row's target is never excluded
    rows, items = mask.nonzero(as_tuple=True)
    ref = F.cross_entropy((h @ table.T).masked_fill(mask, float("-inf")), targets)
    gh, gt = torch.autograd.grad(ref, (h, table))
    got = full_softmax_ce(h, table, targets, chunk=chunk, exclude=(rows, items))
    ch, ct = torch.autograd.grad(got, (h, table))
    plain = full_softmax_ce(h, table, targets, chunk=chunk)
    assert got < plain  # fewer competitors: a lower loss
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(ch, gh, atol=1e-6)
    assert torch.allclose(ct, gt, atol=1e-6)
    with pytest.raises(ValueError, match="own target"):
        full_softmax_ce(h, table, targets, exclude=(torch.tensor([5]), targets[5:6]))


def test_seen_pairs_name_each_positions_earlier_items_but_its_target() -> None:
    from recsieve.training.softmax import seen_pairs

    inputs = torch.tensor([[4, 2, 4, 7], [1, 3, -1, -1]])  # 4 repeats: position 1's target is 4 again
    targets = torch.tensor([[2, 4, 7, 9], [3, -1, -1, -1]])
    real = (inputs >= 0) & (targets >= 0)
    rows, items = seen_pairs(inputs, targets, real)
    # h's rows: (0, 0) (0, 1) (0, 2) (0, 3) (1, 0); row 1's target 4 is also an earlier item: kept
    want = {(0, 4), (1, 2), (2, 4), (2, 2), (3, 4), (3, 2), (3, 7), (4, 1)}
    got = list(zip(rows.tolist(), items.tolist(), strict=True))
    flat = real.flatten().nonzero().flatten().tolist()  # h's rows in (user, position) order
    expect = []
    for r, pos in enumerate(flat):
        b, t = divmod(pos, inputs.shape[1])
        expect += [(r, int(i)) for i in inputs[b, : t + 1].tolist() if i >= 0 and i != int(targets[b, t])]
    assert got == expect and rows.tolist() == sorted(rows.tolist())
    assert set(got) == want


def test_seen_pairs_refuses_real_positions_after_padding() -> None:
    from recsieve.training.softmax import seen_pairs

    inputs = torch.tensor([[4, 2, 4]])
    targets = torch.tensor([[2, 4, 7]])
    real = torch.tensor([[True, False, True]])  # a hole: rows of h[real] would not be a prefix
    with pytest.raises(ValueError, match="real"):
        seen_pairs(inputs, targets, real)
    # a real mask over a padded input (-1): never a pair naming item -1
    rows, items = seen_pairs(torch.tensor([[4, -1]]), torch.tensor([[2, 5]]), torch.tensor([[True, True]]))
    assert rows.tolist() == [0, 1] and items.tolist() == [4, 4]
