"""RegLoRA, the parameter half of SEFE (Chen et al., ICML 2025, "SEFE: Superficial and Essential Forgetting Eliminator
for Multimodal Continual Instruction Tuning"; jinpeng0528/SEFE at 2f61efe, and MCITlib's ``RegLoRA``).

Each task trains a fresh LoRA on the model with every earlier task's LoRA merged in (``scripts/Train/*.sh``:
``--model_name_or_path`` the previous ``_merged`` model, then ``scripts/merge_lora_weights.py``). After a task, its
*key elements* are the 2% of positions of each module's update B A with the largest magnitude
(``key_elements_identification.py``: ``k_1 = int(0.02 * rows * cols)`` of ``|lora_B @ lora_A|``, unscaled), added to
the earlier tasks' (``torch.cat`` of this task's and the legacy ones, duplicates kept). While learning a later task,
loss = CE + 2.5e3 x sum over modules of the mean |(B A)[i, j]| over the key elements (i, j)
(``llava/model/language_model/modeling_llama.py`` lines 780-801, summed over layers; ``llava_llama.py`` line 114).

SEFE's other half, answer style diversification (ASD), rewrites the training data into several answer styles with
an LLM: a data transformation, not part of this method. SEFE trains rank 128 (``--lora_r 128 --lora_alpha 256``);
here the LoRA is every baseline's (D-MoLE's ``seq_lora.sh``), and, like the other baselines, on both towers'
projections (SEFE: the LLM's).
"""

from __future__ import annotations

from pydantic import Field

from .base import LoraHyper, TrainRun
from .seq_lora import SeqLora


class RegLoraHyper(LoraHyper):
    weight: float = Field(
        default=2.5e3, ge=0, description="weight of the key-element penalty (SEFE's llava_llama.py: 2.5e3)"
    )
    key_share: float = Field(
        default=0.02,
        gt=0,
        le=1,
        description="share of each update's positions kept as key elements (key_elements_identification.py: 0.02)",
    )


class RegLora(SeqLora):
    name = "reglora"
    summary = "RegLoRA (SEFE): a LoRA per task, merged, penalised where earlier tasks' updates are largest"
    Hyper = RegLoraHyper
    sweep_grid = ("weight", (2.5e2, 2.5e3, 2.5e4))
    shardable = False  # its penalty reads the parameters themselves

    def trainer(self, run: TrainRun, adapter):
        from .reglora_layers import RegLoraTrainer

        previous = self.trained_before(run.project, run.task_id)
        return self.merged_trainer(run, adapter, RegLoraTrainer, previous=previous[-1] if previous else None)


METHODS = [RegLora()]
