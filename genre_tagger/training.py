"""One training of train.py's classifier (also each fold of genre_tagger/crossval.py)."""

import transformers

from genre_tagger.frozen import train_frozen_head
from genre_tagger.modeling import TextDataset, build_classifier, fine_tune, positive_weights


def train_model(
    args, base_path, labels, tokenizer, train_texts, Y_train, val_texts, Y_val, checkpoint_dir, resume=False
):
    """Fine-tune a fresh classifier (or only its head on a frozen encoder, or that head first and then all of it).

    The settings are train.py's flags (`args`). Returns the model and the training log.
    """
    settings = vars(args)
    transformers.set_seed(args.seed)
    model = build_classifier(base_path, labels, args.pooling, args.dropout, positive_weights(Y_train, args.pos_weight))
    if args.freeze_encoder or (args.probe_first and not resume):  # a resumed run's checkpoint has its head
        log = train_frozen_head(
            model, tokenizer, train_texts, Y_train, val_texts, Y_val, settings, args.threshold,
            args.frozen_head, args.dropout, args.max_length,
        )  # fmt: skip
        if args.freeze_encoder:
            return model, log
        print("head fitted on the frozen encoder; now fine-tuning everything from it", flush=True)
    trainer = fine_tune(
        model,
        tokenizer,
        TextDataset(train_texts, tokenizer, args.max_length, Y_train),
        TextDataset(val_texts, tokenizer, args.max_length, Y_val),
        settings,
        checkpoint_dir,
        args.threshold,
        resume=resume,
    )
    return model, trainer.state.log_history
