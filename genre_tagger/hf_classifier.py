"""The genre classifier as a Hugging Face model: its config and its model class, in one self-contained file.

This file imports only torch and transformers because `save_pretrained` copies it into every run folder
(`register_for_auto_class` below): a run then loads anywhere with
`AutoModelForSequenceClassification.from_pretrained(run, trust_remote_code=True)` or
`pipeline("text-classification", model=run, top_k=None, trust_remote_code=True)`, without this project
installed. Inside the project, `import genre_tagger` registers both classes with the auto classes, so no
remote code is needed there.

The config holds the encoder's own config (any encoder `AutoModel.from_config` builds: BERT/MiniLM,
DistilBERT, MPNet, ...), the pooling, the dropout before the head, the labels and the problem type.
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.initialization import ones_
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "genre_tagger"
POOLINGS = ("mean", "cls")


class GenreTaggerConfig(PreTrainedConfig):
    """Config of a genre tagger: `encoder` (the encoder's config), `pooling`, `classifier_dropout`, labels."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: PreTrainedConfig | dict | None = None
    pooling: str = "mean"
    classifier_dropout: float = 0.1
    initializer_range: float = 0.02


class GenreTaggerForSequenceClassification(PreTrainedModel):
    """A transformer encoder, pooled over tokens, then one linear layer giving a logit per genre (sigmoid/BCE).

    Mean pooling over the real (unmasked) tokens is what all-MiniLM-L6-v2 was trained with; its [CLS]
    pooler was never trained, so the stock sequence-classification head learns slowly on it.
    `pos_weight` (one weight per genre for the positives in BCE) only shapes the training loss: it is a
    non-persistent buffer, never saved, ones unless the trainer sets it.
    """

    config_class = GenreTaggerConfig
    base_model_prefix = "encoder"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config, pos_weight=None):
        super().__init__(config)
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {config.pooling!r}")
        self.num_labels = config.num_labels
        self.encoder = AutoModel.from_config(config.encoder)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.encoder.hidden_size, config.num_labels)
        self.register_buffer("pos_weight", torch.ones(config.num_labels), persistent=False)
        self.post_init()
        if pos_weight is not None:
            with torch.no_grad():
                self.pos_weight.copy_(torch.as_tensor(pos_weight, dtype=torch.float32))

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            # Loading builds the model on the meta device; the buffer is not in the weights file.
            ones_(module.pos_weight)

    def pool(self, hidden, attention_mask):
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None):
        # token_type_ids: the pipeline passes a BERT tokenizer's all-zero segment ids for single texts; the
        # encoder assumes exactly those when they are left out, as training and the ONNX graph do.
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.classifier(self.dropout(self.pool(hidden, attention_mask)))
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, labels.to(logits.dtype), pos_weight=self.pos_weight.to(logits.dtype)
            )
        return SequenceClassifierOutput(loss=loss, logits=logits)


# save_pretrained copies this file into the run and writes `auto_map` into its config.json.
GenreTaggerConfig.register_for_auto_class()
GenreTaggerForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
