"""The fusion trainer (fusechat3/training/fusion_trainer.py): a few real steps on the toy target with a
teacher from a source of another tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusechat3.explicit.represent import represent
from fusechat3.explicit.teacher import teacher
from fusechat3.explicit.vocab import vocab_map
from fusechat3.recipe import resolve_model
from fusechat3.toyworld import tasks as T
from fusechat3.training.fusion_trainer import FusionCollator, FusionConfig, FusionTrainer


def test_collator_pads_the_sparse_teacher_without_a_vocabulary_axis():
    rows = [
        {
            "input_ids": [5, 6, 7],
            "labels": [-100, 6, 7],
            "fused_ids": [[6, 1], [7, -1], [-1, -1]],
            "fused_probs": [[0.9, 0.1], [1, 0], [0, 0]],
        },
        {"input_ids": [5], "labels": [-100], "fused_ids": [[-1, -1]], "fused_probs": [[0, 0]]},
    ]
    b = FusionCollator(pad_token_id=0)(rows)
    assert b["fused_ids"].shape == (2, 3, 2) and b["labels"][1].tolist() == [-100, -100, -100]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and b["fused_ids"][1, 1:].eq(-1).all()


def test_a_few_fusion_steps_change_the_target(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_path, s_path = resolve_model("toyworld:target"), resolve_model("toyworld:qwen2-code")
    tok, s_tok = AutoTokenizer.from_pretrained(t_path), AutoTokenizer.from_pretrained(s_path)
    student, source = AutoModelForCausalLM.from_pretrained(t_path), AutoModelForCausalLM.from_pretrained(s_path).eval()
    convs = [
        [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.response}]
        for t in T.split_tasks("code", 8, "fusion")
    ]
    t_reps, s_reps = represent(student.eval(), tok, convs, k=4), represent(source, s_tok, convs, k=4)
    vmap = vocab_map(s_tok, tok)
    rows = []
    for t_rep, s_rep in zip(t_reps, s_reps, strict=True):
        fused = teacher(t_rep, [s_rep], [vmap], "minCE", k=4)
        labels = np.where(t_rep["mask"], t_rep["ids"], -100)
        rows.append(
            {
                "input_ids": t_rep["ids"].tolist(),
                "labels": labels.tolist(),
                "fused_ids": fused.ids.tolist(),
                "fused_probs": fused.probs.tolist(),
            }
        )
    before = [p.detach().clone() for p in student.parameters()]
    args = FusionConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        fusion_lambda=0.5,
    )
    trainer = FusionTrainer(
        model=student.train(), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    with pytest.raises(ValueError, match="fusion_lambda"):
        FusionConfig(output_dir=str(tmp_path), fusion_lambda=1.5)
