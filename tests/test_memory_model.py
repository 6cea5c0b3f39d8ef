"""The model side of explicit memory: backbone adapter, MemoryGate, Fusion, MemoryModel, router stage.

Every model here is tiny and random (a trained backbone is not available in tests); the facts
are made up in this file.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import random
import shutil

import pytest
import torch

from llm_foundry.config import ModelConfig
from llm_foundry.models import MiniLLM, save_model_dir
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.utils.errors import FoundryError
from llm_foundry.memory.backbone import Backbone
from llm_foundry.memory.gate import BM25, exact_topk, words
from llm_foundry.memory.model import MODULES_FILE, MemoryModel
from llm_foundry.memory.stages import (RouterData, answer_loss, gold_first, kl_to_backbone, memory_step_parts,
                                       retrieval_accuracy, retrieval_loss, train_router)
from llm_foundry.training.step import train_step

TOK = ByteTokenizer()


def tiny_minillm(seed: int = 0) -> MiniLLM:
    torch.manual_seed(seed)
    return MiniLLM(ModelConfig(vocab_size=TOK.vocab_size, dim=64, n_layers=4, n_heads=4, max_seq_len=160))


def facts(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """``n`` made-up entities, two facts each: (entries, questions, answers), question i asks entry i."""
    rng = random.Random(seed)
    name = lambda: "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)).title()  # noqa: E731
    entries, questions, answers = [], [], []
    for _ in range(n):
        entity = name()
        for fact, question in (("The capital of {} is {}.", "What is the capital of {}?"),
                               ("The river of {} is the {}.", "Which river flows through {}?")):
            value = name()
            entries.append(fact.format(entity, value))
            questions.append(question.format(entity))
            answers.append(value)
    return entries, questions, answers


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(autouse=True)
def _seeded():
    """Fresh memory modules draw from the global RNG: the same draws whatever runs first."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return Backbone(tiny_minillm(), TOK)


def ids_of(text: str) -> torch.Tensor:
    return torch.tensor([TOK.encode(text)])


# ------------------------------------------------------------------ exactness and frozen weights
def test_memory_off_empty_and_at_init_equal_the_backbone_exactly(backbone):
    model = MemoryModel(backbone)
    entries, questions, _ = facts(6)
    ids = ids_of(questions[0] + " Pa")
    own = backbone.model(ids)[0]  # the backbone's own forward, nothing of the memory involved
    assert (model(ids) - own).abs().max().item() == 0  # memory off
    assert (model(ids, model.read([[]])) - own).abs().max().item() == 0  # an empty memory
    bank = model.bank(range(len(entries)), entries)
    found = model.retrieve(questions[0], 3, bank)
    assert (model(ids, found) - own).abs().max().item() == 0  # entries attached, modules at init
    empty = model.bank([], [])
    assert (model(ids, model.retrieve(questions[0], 3, empty, route=True)) - own).abs().max().item() == 0


def test_training_changes_only_memory_parameters_and_memory_then_matters(backbone):
    model = MemoryModel(backbone)
    before = weights_digest(backbone)
    memory_before = weights_digest(model.memory)
    entries, questions, answers = facts(8)
    bank = model.bank(range(len(entries)), entries)
    parts = memory_step_parts(model, lr=1e-2)
    assert not any(p.requires_grad for p in backbone.parameters())
    model.train()
    assert model.gate.training and not backbone.model.training  # no dropout in the frozen backbone
    assert {id(p) for g in parts.optimizers[0].param_groups for p in g["params"]} == {
        id(p) for p in model.trainable_parameters()}
    for _ in range(3):
        train_step(parts, 1.0, 1, lambda _: answer_loss(model, questions[:4], answers[:4],
                                                       model.retrieve(questions[:4], 3, bank, route=True)))
    assert weights_digest(backbone) == before
    assert weights_digest(model.memory) != memory_before
    ids = ids_of(questions[0] + " ")
    own = backbone.model(ids)[0]
    assert (model(ids) - own).abs().max().item() == 0  # switched off: still the backbone exactly
    assert (model(ids, model.retrieve(questions[0], 3, bank)) - own).abs().max().item() > 0


def test_answer_loss_reaches_gate_and_fusion_through_routed_top_k(backbone):
    """The source's bug: after stage 1 the gate got no gradient. Here the routing softmax over the
    retrieved entries weights their tokens in the fusion, so the LM loss trains the gate too."""
    model = MemoryModel(backbone)
    entries, questions, answers = facts(8)
    bank = model.bank(range(len(entries)), entries)
    parts = memory_step_parts(model, lr=1e-2)
    loss = lambda _: answer_loss(model, questions[:4], answers[:4],  # noqa: E731
                                 model.retrieve(questions[:4], 3, bank, route=True))
    train_step(parts, 1.0, 1, loss)  # the output projection leaves zero: now gradient passes through it
    found = model.retrieve(questions[:2], 3, bank, route=True)  # entries read once, for routing and fusion
    ids = ids_of(questions[0]).expand(2, -1)
    assert torch.equal(model(ids, found), model(ids, model.read(found.texts, found.route)))
    # In use (no autograd) entries are weighed alike, from the bank's vectors (rebuilt: the gate trained).
    fresh = model.bank(range(len(entries)), entries)
    with torch.no_grad():
        plain = model.retrieve(questions[:2], 3, fresh)
        assert plain.ids == found.ids
        torch.testing.assert_close(model(ids, plain), model(ids, found), atol=1e-5, rtol=1e-5)
    loss(0).backward()
    named = dict(model.memory.named_parameters())
    for name in ("gate.query_proj.weight", "gate.entry_proj.weight", "gate.log_scale",
                 "fusion.blocks.2.wq.weight", "fusion.blocks.2.wk.weight", "fusion.blocks.2.null_k"):
        grad = named[name].grad
        assert grad is not None and grad.abs().sum().item() > 0, name


def test_kv_cache_decoding_with_memory_attached_matches_the_whole_forward(backbone):
    """What an Engine needs: the injection is per position, so feeding tokens one at a time through
    the KV cache (the decode loop) gives the logits of one forward over the whole sequence."""
    model = MemoryModel(backbone)
    torch.manual_seed(1)
    with torch.no_grad():
        for block in model.fusion.blocks.values():
            block.wo.weight.normal_(0, 0.05)  # as if trained: the memory changes the logits
    entries, questions, _ = facts(4)
    memory = model.read([entries[:2]])
    ids = ids_of(questions[0] + " Pa")
    whole = model(ids, memory)
    assert (whole - backbone.model(ids)[0]).abs().max() > 1e-3
    inner = backbone.model
    with torch.no_grad(), model.attached(memory):
        cache = inner.new_cache(1)
        steps = [inner(ids[:, :5], cache=cache)[0]]
        for t in range(5, ids.shape[1]):
            steps.append(inner(ids[:, t:t + 1], cache=cache, last_only=True)[0])
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-4, rtol=1e-4)
    assert (inner(ids)[0] - backbone.model(ids)[0]).abs().max() == 0  # the hooks are gone after the block


def test_the_engine_decodes_with_memory_attached(backbone):
    """The one decode loop (Engine, KV cache, last-position logits) with the memory's hooks
    attached gives the greedy tokens of the whole-sequence forward with memory."""
    from llm_foundry.inference import Engine

    model = MemoryModel(backbone)
    torch.manual_seed(1)
    with torch.no_grad():
        for block in model.fusion.blocks.values():
            block.wo.weight.normal_(0, 0.2)
    entries, questions, _ = facts(4)
    memory = model.read([entries[:2]])
    prompt = TOK.encode(questions[0] + " ")
    engine = Engine(backbone.model, TOK, precision="fp32", tools=False, mode="text")  # frozen=False: live model
    with model.attached(memory):
        tokens, _ = engine.generate(prompt, max_tokens=8, temperature=0.0)
    plain, _ = engine.generate(prompt, max_tokens=8, temperature=0.0)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            logits = model(torch.tensor([ids]), memory)[0, -1]
            logits[engine.suppress] = float("-inf")  # what the engine never samples in text mode
            ids.append(int(logits.argmax()))
            if ids[-1] in engine.terminators:
                ids.pop()
                break
    assert tokens[0] == ids[len(prompt):]
    assert tokens[0] != plain[0]  # the memory did change the reply
    # An inference copy (fused projections, as a frozen Engine decodes with) takes the same hooks.
    fused = copy.deepcopy(backbone.model).fuse_projections()
    ids = torch.tensor([prompt])
    with torch.no_grad(), model.attached(memory, fused):
        torch.testing.assert_close(fused(ids)[0], model(ids, memory), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ Hugging Face folders
def _hf_folder(tmp_path, arch: str, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    if arch == "qwen3" and not hasattr(transformers, "Qwen3Config"):
        pytest.skip("this transformers has no Qwen3")
    config_cls, model_cls = ((transformers.LlamaConfig, transformers.LlamaForCausalLM) if arch == "llama"
                             else (transformers.Qwen3Config, transformers.Qwen3ForCausalLM))
    torch.manual_seed(seed)
    cfg = config_cls(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    folder = tmp_path / arch
    model_cls(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_hugging_face_backbone(tmp_path, arch):
    folder = _hf_folder(tmp_path, arch)
    with pytest.raises(FoundryError, match="no tokenizer files"):  # a folder without a tokenizer, none passed
        Backbone.load(folder)
    backbone = Backbone.load(folder, tokenizer=TOK)
    assert (backbone.dim, backbone.n_layers) == (32, 3)
    assert not any(p.requires_grad for p in backbone.parameters())
    before = weights_digest(backbone)
    model = MemoryModel(backbone)
    entries, questions, answers = facts(4)
    ids = ids_of(questions[0] + " ")
    own = backbone.model(input_ids=ids).logits
    assert (model(ids) - own).abs().max().item() == 0
    bank = model.bank(range(10, 10 + len(entries)), entries)
    assert (model(ids, model.retrieve(questions[0], 2, bank)) - own).abs().max().item() == 0
    assert backbone.hidden_states(ids, 1).shape == (1, ids.shape[1], 32)
    parts = memory_step_parts(model)
    for _ in range(2):
        train_step(parts, 1.0, 1, lambda _: answer_loss(model, questions[:2], answers[:2],
                                                       model.retrieve(questions[:2], 2, bank, route=True)))
    assert weights_digest(backbone) == before
    assert (model(ids, model.retrieve(questions[0], 2, bank)) - own).abs().max().item() > 0
    # The fingerprint is the model's, not the folder's: a copy elsewhere has the same one.
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(folder, copy)
    assert Backbone.load(copy, tokenizer=TOK).fingerprint() == backbone.fingerprint()


# ------------------------------------------------------------------ identity
def test_fingerprint_follows_the_backbone_and_the_gate(tmp_path, backbone):
    save_model_dir(tmp_path / "a", backbone.model, TOK)
    loaded = Backbone.load(tmp_path / "a")
    assert loaded.fingerprint() == backbone.fingerprint()
    other = tiny_minillm(seed=1)
    assert Backbone(other, TOK).fingerprint() != backbone.fingerprint()
    changed = tiny_minillm()
    with torch.no_grad():
        changed.layers[0].ffn.w1.weight.mul_(1.01)  # one matrix, slightly
    assert Backbone(changed, TOK).fingerprint() != backbone.fingerprint()
    model = MemoryModel(backbone)
    first = model.fingerprint()
    entries, questions, _ = facts(8)
    train_router(model, RouterData.read(model, questions, list(range(len(entries))), entries), steps=2)
    assert model.fingerprint() != first  # the entry tower trained: cached vectors are stale


def test_save_and_load_the_memory_modules(tmp_path, backbone):
    model = MemoryModel(backbone)
    with torch.no_grad():
        for p in model.memory.parameters():
            p.add_(0.01 * torch.randn_like(p))
    file = model.save(tmp_path)
    assert file == tmp_path / MODULES_FILE and [p.name for p in tmp_path.iterdir()] == [MODULES_FILE]
    again = MemoryModel.load(tmp_path, backbone)
    entries, questions, _ = facts(3)
    memory = model.read([entries[:2]])
    ids = ids_of(questions[0])
    assert torch.equal(again(ids, memory), model(ids, memory))
    assert again.fingerprint() == model.fingerprint()
    with pytest.raises(FoundryError, match="built for another backbone"):
        MemoryModel.load(tmp_path, Backbone(tiny_minillm(seed=3), TOK))
    blob = bytearray(file.read_bytes())
    blob[-3] ^= 0xFF
    file.write_bytes(bytes(blob))
    with pytest.raises(FoundryError, match="damaged"):
        MemoryModel.load(tmp_path, backbone)
    with pytest.raises(FoundryError, match="no memory modules"):
        MemoryModel.load(tmp_path / "nothing", backbone)


# ------------------------------------------------------------------ search
def test_topk_is_exact_and_never_returns_deleted_rows():
    torch.manual_seed(0)
    entries = torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1)
    query = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    valid = torch.rand(1000) > 0.3
    scores, rows = exact_topk(query, entries, 10, valid, chunk=97)  # chunks that do not divide 1000
    brute = (query @ entries.T).masked_fill(~valid, float("-inf"))
    want_s, want_r = brute.topk(10, dim=1)
    assert torch.equal(rows, want_r) and torch.allclose(scores, want_s)
    assert valid[rows].all()
    few = torch.zeros(1000, dtype=torch.bool)
    few[[3, 500, 999]] = True
    _, rows = exact_topk(query, entries, 10, few, chunk=97)
    assert rows.shape == (5, 3) and set(rows.flatten().tolist()) == {3, 500, 999}


def test_deleted_entries_leave_retrieval_at_once(backbone):
    model = MemoryModel(backbone)
    entries, questions, _ = facts(10)
    bank = model.bank(range(100, 100 + len(entries)), entries)
    first = model.retrieve(questions[0], 5, bank).ids[0]
    bank.delete([first[0], first[2]])
    after = model.retrieve(questions, 18, bank).ids
    assert all(first[0] not in row and first[2] not in row and len(row) == 18 for row in after)
    assert len(bank) == len(entries) - 2
    with pytest.raises(FoundryError, match="no entry with id 7"):
        bank.delete([7])


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu is not installed")
def test_faiss_index_behind_the_same_interface(backbone, monkeypatch):
    import llm_foundry.memory.model as model_module
    from llm_foundry.memory.gate import ExactIndex, FaissIndex

    model = MemoryModel(backbone)
    entries, questions, _ = facts(20)
    exact, approx = model.bank(range(len(entries)), entries), model.bank(range(len(entries)), entries, approximate=True)
    assert type(exact.index) is ExactIndex and type(approx.index) is FaissIndex  # auto: exact below 200k entries
    assert exact.index.name == "exact" and approx.index.name.startswith("faiss IVF")
    monkeypatch.setattr(model_module, "APPROXIMATE_FROM", len(entries))  # the auto choice follows the threshold
    assert type(model.bank(range(len(entries)), entries, exact.index.vectors).index) is FaissIndex
    assert type(model.bank(range(5), entries[:5], exact.index.vectors[:5]).index) is ExactIndex
    assert model.retrieve(questions, 1, approx).ids == model.retrieve(questions, 1, exact).ids
    gone = model.retrieve(questions[:4], 1, approx).ids
    for bank in (exact, approx):
        bank.delete([row[0] for row in gone])
    assert all(row[0] not in after for row, after in zip(gone, model.retrieve(questions[:4], 5, approx).ids))
    # Edits in place, in both: entry 5 gets a new fact, and a new id 99 holds another.
    texts = ["Velmora Quist was born in Oslo.", "Tarnik Vell plays the oboe."]
    edit = ([5, 99], texts, model.gate.encode_entries(texts))
    for bank in (exact, approx):
        bank.upsert(*edit)
    assert approx.index.index.ntotal == len(entries) + 1  # 5's old vector left the lists
    asked = questions + texts
    assert model.retrieve(asked, 3, approx).ids == model.retrieve(asked, 3, exact).ids
    assert approx.texts[approx.row_of[5]] == texts[0] and approx.texts[approx.row_of[99]] == texts[1]


def test_hybrid_mixes_bm25_with_the_dense_score_and_reports_both(backbone):
    model = MemoryModel(backbone)
    entries, questions, _ = facts(30)
    bank = model.bank(range(len(entries)), entries)
    lexical = BM25(entries).scores(questions[:1])
    assert lexical.max() == 1.0 and lexical.min() >= 0
    got = model.retrieve(questions[:6], 4, bank, hybrid=0.5)
    assert got.lexical is not None and got.dense.shape == got.lexical.shape == (6, 4)
    torch.testing.assert_close(got.scores, 0.5 * got.dense + 0.5 * got.lexical)
    # The entity's name is rare, so the lexical signal alone puts one of its two facts first.
    dense_hits = sum(ids[0] // 2 == i // 2 for i, ids in enumerate(model.retrieve(questions, 1, bank).ids))
    hybrid_hits = sum(ids[0] // 2 == i // 2 for i, ids in enumerate(model.retrieve(questions, 1, bank, hybrid=0.5).ids))
    assert hybrid_hits == len(questions) and hybrid_hits > dense_hits
    assert BM25(["北京是中国的首都。", "巴黎是法国的首都。"]).scores(["法国的首都是哪里？"])[0].argmax() == 1
    assert words("Zorvak的首都") == ["zorvak", "的", "首", "都", "的首", "首都"]


# ------------------------------------------------------------------ router stage
def test_router_stage_learns_retrieval_of_entities_it_never_saw(backbone):
    model = MemoryModel(backbone)
    entries, questions, _ = facts(48)
    half = len(entries) // 2
    train = RouterData.read(model, questions[:half], list(range(half)), entries[:half])
    held_out = RouterData.read(model, questions[half:], list(range(half)), entries[half:])
    before = retrieval_accuracy(model, held_out)
    losses = train_router(model, train, steps=60, batch_size=32, hard=4)
    assert losses[-1] < losses[0]
    assert retrieval_accuracy(model, train) > 0.9
    assert retrieval_accuracy(model, held_out) > before + 0.3


def test_gate_pools_by_the_mean_at_init_and_learns_which_tokens_matter(backbone):
    """The towers' attention starts as the plain mean over real tokens (padding never counts),
    and router training moves it away from the mean: it weighs some tokens over others."""
    model = MemoryModel(backbone)
    gate = model.gate
    entries, questions, _ = facts(16)
    states, embeds, mask = gate.read(entries[:4])
    x = torch.cat([states, embeds], -1).float()
    mean = (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(gate.pool((states, embeds, mask), gate.entry_attn), mean, atol=1e-5)
    assert torch.allclose(gate.encode_entries(entries[:1]), gate.encode_entries(entries[:4])[:1], atol=1e-5)  # padding-free
    train_router(model, RouterData.read(model, questions, list(range(len(entries))), entries), steps=20, hard=2)
    assert gate.query_attn.weight.abs().sum() > 0 and gate.entry_attn.weight.abs().sum() > 0
    with torch.no_grad():
        moved = (gate.pool((states, embeds, mask), gate.entry_attn) - mean).norm(dim=-1) / mean.norm(dim=-1)
    assert float(moved.min()) > 0.01  # no longer the mean, for every entry


def test_joint_stage_pieces_gold_first_retrieval_loss_and_kl(backbone):
    model = MemoryModel(backbone)
    entries, questions, answers = facts(10)
    ids = list(range(500, 500 + len(entries)))
    bank = model.bank(ids, entries)
    rows, cols = gold_first(model, questions[:6], ids[:6], bank, k=3)
    assert cols.tolist() == [0] * 6 and all(len(r) == 3 and r[0] == entries[i] and entries[i] not in r[1:]
                                            for i, r in enumerate(rows))
    rows, cols = gold_first(model, questions[:6], ids[:6], bank, k=3, missing=1.0)
    assert cols.tolist() == [-1] * 6 and all(len(r) == 3 and entries[i] not in r for i, r in enumerate(rows))
    rows, cols = gold_first(model, questions[:6], ids[:6], bank, k=3, missing=0.5,
                            generator=torch.Generator().manual_seed(0))
    assert set(cols.tolist()) == {0, -1}
    # Joint loss: answers read the gold-first entries, weighted by the gate; retrieval loss on the same logits.
    route, memory = model.route(model.gate.encode_queries(questions[:6]), rows)
    loss = answer_loss(model, questions[:6], answers[:6], memory) + retrieval_loss(route, cols)
    loss.backward()
    assert model.gate.query_proj.weight.grad.abs().sum() > 0  # from the retrieval loss, already at step 0
    assert retrieval_loss(route, torch.full((6,), -1)).item() == 0
    # The KL to the backbone: 0 at init (the fusion adds exact zeros), > 0 once the fusion changes the logits.
    text = ids_of("Plain text that is about nothing in memory.")
    far = model.read([entries[:2]])
    assert kl_to_backbone(model, text, far).item() == 0
    torch.manual_seed(2)
    with torch.no_grad():
        for block in model.fusion.blocks.values():
            block.wo.weight.normal_(0, 0.05)
    kl = kl_to_backbone(model, text, far)
    assert kl.item() > 0
    model.zero_grad()
    kl.backward()
    assert next(iter(model.fusion.blocks.values())).wo.weight.grad.abs().sum() > 0
    with pytest.raises(FoundryError, match="at least k \\+ 1 live entries"):
        gold_first(model, questions[:1], ids[:1], model.bank(ids[:2], entries[:2]), k=2)


# ------------------------------------------------------------------ bad input
def test_bad_inputs_are_one_line_errors(tmp_path, backbone):
    def one_line(fn, match):
        with pytest.raises(FoundryError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)

    one_line(lambda: Backbone.load(tmp_path / "missing"), "backbone folder not found")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    one_line(lambda: Backbone.load(tmp_path / "gpt"), "unsupported backbone architecture 'gpt2'")
    hf = _hf_folder(tmp_path, "llama")
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    one_line(lambda: Backbone.load(hf, tokenizer=TOK), "cannot load the Hugging Face model")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_bytes(b"\x00\xff not json")
    one_line(lambda: Backbone.load(tmp_path / "junk"), "not valid JSON")
    (tmp_path / "empty").mkdir()
    one_line(lambda: Backbone.load(tmp_path / "empty"), "no config.json")
    one_line(lambda: backbone.hidden_states(ids_of("x"), 4), "outside the backbone's blocks 0..3")
    model = MemoryModel(backbone)
    entries, questions, _ = facts(2)
    bank = model.bank(range(len(entries)), entries)
    one_line(lambda: model.retrieve(questions[0], 0, bank), "k must be >= 1")
    one_line(lambda: model.retrieve(questions[0], 2, bank, hybrid=1.5), "hybrid weight")
    one_line(lambda: model.retrieve([], 2, bank), "no questions")
    one_line(lambda: model.bank([1, 2], ["a"], torch.zeros(1, model.gate.dim)), "bank of 2 ids, 1 texts")
    one_line(lambda: model.bank([1], ["a"], torch.zeros(1, 3)), "rebuild the cache")
    one_line(lambda: model.gate.encode_entries(["fine", ""]), "empty text")
    one_line(lambda: RouterData.read(model, questions, [0], entries), "one gold entry per question")
