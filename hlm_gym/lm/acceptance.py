"""Teacher-forced agreement of a draft model with a target model on given token rows.

The expected speculative acceptance ``sum_v min(p_v, q_v)`` (``p``: target, ``q``: draft) and
the greedy agreement, averaged over masked positions: the figure the distillation recipe
validates on and the shipped SLM artifact records (:func:`hlm_gym.lm.slm.check_acceptance`).
"""

from __future__ import annotations

import torch


def final_hidden(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last hidden states ``(batch, seq, hidden)`` of a causal LM's body (no LM head, no cache)."""
    return model.model(input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


@torch.no_grad()
def acceptance_on(teacher, student, ids: torch.Tensor, mask: torch.Tensor,
                  chunk: int = 4) -> tuple[float, float, int]:
    """Mean acceptance ``sum_v min(p_v, q_v)`` and greedy agreement over the masked positions.

    Returns ``(acceptance, agreement, n_positions)``; ``ids`` and ``mask`` are ``(rows, seq)``.
    """
    acc_sum, agree_sum, n = 0.0, 0.0, 0
    for i in range(0, ids.shape[0], chunk):
        x, m = ids[i:i + chunk], mask[i:i + chunk]
        if not m.any():
            continue
        th = final_hidden(teacher, x)[m]
        sh = final_hidden(student, x)[m]
        p = torch.softmax(teacher.lm_head(th).float(), -1)
        q = torch.softmax(student.lm_head(sh).float(), -1)
        acc_sum += torch.minimum(p, q).sum(-1).sum().item()
        agree_sum += (p.argmax(-1) == q.argmax(-1)).sum().item()
        n += int(m.sum())
    return acc_sum / max(n, 1), agree_sum / max(n, 1), n
