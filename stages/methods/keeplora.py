"""KeepLoRA (Luo et al., ICLR 2026, "KeepLoRA: Continual Learning with Residual Gradient Adaptation";
MaolinLuo/KeepLoRA at a17f9c2, its MCITlib port ``MCITlib/KeepLoRA``).

Each module keeps a *principal subspace* M (orthonormal rows in its input space) of what earlier tasks and the
pre-trained model rely on. Task t's LoRA is fixed to the residual of task t's gradient outside M:

1. G = the mean gradient of the loss with respect to the module's weight, one sample at a time, over
   ``gradient_ratio`` of task t's samples (evenly spaced), on the model with every earlier LoRA merged in
   (``llava/train/extract_gradients.py``, ``extract_gradients`` and ``--data-ratio``, 0.2 in
   ``scripts/Train_UCIT/train_all.sh``);
2. A = the top-``rank`` left singular vectors of (I - M^T M) G^T (``merge_gradient_chunks``, ``fixed_rank``
   mode), B = 0; A stays frozen (``--freeze_lora_A True``, ``train.py`` ``freeze_lora_A_matrices``) and only B
   (a DoRA's magnitudes too) trains; then the LoRA is merged into the model (``Task*.sh``, ``merge_lora_weights``);
3. M grows by the residual's leading directions until they and M hold ``energy`` of G's energy
   (``energy`` mode, threshold 0.99 in ``configs/model_configs/LLaVA/UCIT/train_post/task*.json``), G taken again
   on the trained model.

M starts from the pre-trained weights: the leading left singular vectors of W^T holding ``weight_energy`` of
its energy (``llava/train/extract_weights.py``; 0.6 in ``train_all.sh``). Rank 32 and alpha rank / 4 are the UCIT
scripts' (``train/task*.json``, ``Task*.sh``). Differences: the SVDs are exact (``torch.linalg.svd``; the
reference's fixed-rank step uses the randomised ``svd_lowrank``), the gradient passes run without dropout, and
like the other baselines it adapts both towers' projections (the reference: the LLM's ``model.layers``).
"""

from __future__ import annotations

from pydantic import Field

from ..errors import UserError
from .base import LoraHyper, TrainRun
from .seq_lora import SeqLora


class KeepLoraHyper(LoraHyper):
    rank: int = Field(default=32, gt=0, description="LoRA rank (KeepLoRA's UCIT configs: 32)")
    alpha: int = Field(default=8, gt=0, description="LoRA alpha (KeepLoRA's Task*.sh: rank / 4)")
    gradient_ratio: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="share of the task's samples whose mean gradient sets A and grows M (train_all.sh: 0.2)",
    )
    weight_energy: float = Field(
        default=0.6, gt=0, le=1, description="energy of the pre-trained weights that M starts with (train_all.sh: 0.6)"
    )
    energy: float = Field(
        default=0.99,
        gt=0,
        le=1,
        description="energy of each task's gradient that M holds after it (train_post configs: 0.99)",
    )


class KeepLora(SeqLora):
    name = "keeplora"
    summary = "KeepLoRA: a LoRA per task, A fixed to the gradient's residual outside earlier tasks' subspace, merged"
    Hyper = KeepLoraHyper

    def trainer(self, run: TrainRun, adapter):
        from .keeplora_layers import KeepLoraTrainer

        if run.options.expert_type == "dora":
            raise UserError(
                "keeplora reads the merged weight's gradient through the base weight, which a DoRA's "
                "magnitudes rescale: it trains LoRA only"
            )
        previous = self.trained_before(run.project, run.task_id)
        return self.merged_trainer(run, adapter, KeepLoraTrainer, previous=previous[-1] if previous else None)


METHODS = [KeepLora()]
