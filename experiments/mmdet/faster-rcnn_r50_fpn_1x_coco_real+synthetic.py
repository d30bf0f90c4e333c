# Faster R-CNN R50-FPN, 1x schedule, trained on real COCO train2017 + a detdiffusion synthetic set and
# evaluated on real val2017: the trainability protocol (Gen2Det style) as an mmdet 3.x config.
#
# The synthetic set is what `detdiffusion predict` writes (`annotations.json` + `images/`), optionally
# filtered first with `detdiffusion.evaluation.filter_instances` (point `ann_file` at the filtered JSON;
# its file names stay relative to the generation folder). In an mmdet 3.x checkout:
#
#   python tools/train.py /path/to/faster-rcnn_r50_fpn_1x_coco_real+synthetic.py \
#       --cfg-options train_dataloader.dataset.datasets.1.data_root=/path/to/synthetic/
#
# Self-contained (no `_base_`): the model, data, schedule and runtime below are mmdet's
# configs/_base_/{models/faster-rcnn_r50_fpn,datasets/coco_detection,schedules/schedule_1x,
# default_runtime}.py, with the training set made a ConcatDataset of real + synthetic.
#
# Not here: Gen2Det's background ignore (no loss on the background of synthetic images); stock mmdet
# has no such option, detdiffusion's DetectorModule does (`background_ignore`). Synthetic images are
# shuffled in with the real ones (detdiffusion's `--data.mix concat`); for a fixed synthetic share per
# batch, mmdet has `GroupMultiSourceSampler` (source_ratio). CocoDataset matches the synthetic set's
# categories to COCO's 80 classes by name and skips the rest (COCO-Stuff's stuff classes).

# Paths. They are read when this file is evaluated, so `--cfg-options data_root=...` alone changes
# nothing: override the fields that use them, e.g.
#   --cfg-options train_dataloader.dataset.datasets.0.data_root=/coco/ \
#       val_dataloader.dataset.data_root=/coco/ test_dataloader.dataset.data_root=/coco/ \
#       val_evaluator.ann_file=/coco/annotations/instances_val2017.json \
#       test_evaluator.ann_file=/coco/annotations/instances_val2017.json \
#       train_dataloader.dataset.datasets.1.data_root=/path/to/synthetic/
# or edit the lines below.
data_root = "data/coco/"  # real COCO: annotations/instances_{train,val}2017.json, train2017/, val2017/
synthetic_root = "data/synthetic/"  # `detdiffusion predict`'s output folder (or a link to it)
synthetic_ann_file = "annotations.json"  # relative to synthetic_root, or an absolute path

# ---------------------------------------------------------------------------------------------------
# Model: configs/_base_/models/faster-rcnn_r50_fpn.py
model = dict(
    type="FasterRCNN",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
    ),
    backbone=dict(
        type="ResNet",
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=True,
        style="pytorch",
        init_cfg=dict(type="Pretrained", checkpoint="torchvision://resnet50"),
    ),
    neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
    rpn_head=dict(
        type="RPNHead",
        in_channels=256,
        feat_channels=256,
        anchor_generator=dict(
            type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]
        ),
        bbox_coder=dict(
            type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]
        ),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    ),
    roi_head=dict(
        type="StandardRoIHead",
        bbox_roi_extractor=dict(
            type="SingleRoIExtractor",
            roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32],
        ),
        bbox_head=dict(
            type="Shared2FCBBoxHead",
            in_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder",
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2],
            ),
            reg_class_agnostic=False,
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
    ),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(
                type="MaxIoUAssigner",
                pos_iou_thr=0.7,
                neg_iou_thr=0.3,
                min_pos_iou=0.3,
                match_low_quality=True,
                ignore_iof_thr=-1,
            ),
            sampler=dict(
                type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False
            ),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        rpn_proposal=dict(
            nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0
        ),
        rcnn=dict(
            assigner=dict(
                type="MaxIoUAssigner",
                pos_iou_thr=0.5,
                neg_iou_thr=0.5,
                min_pos_iou=0.5,
                match_low_quality=False,
                ignore_iof_thr=-1,
            ),
            sampler=dict(
                type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True
            ),
            pos_weight=-1,
            debug=False,
        ),
    ),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100),
    ),
)

# ---------------------------------------------------------------------------------------------------
# Data: configs/_base_/datasets/coco_detection.py, training on real + synthetic
dataset_type = "CocoDataset"
backend_args = None

train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    batch_sampler=dict(type="AspectRatioBatchSampler"),
    dataset=dict(
        type="ConcatDataset",
        datasets=[
            dict(
                type=dataset_type,
                data_root=data_root,
                ann_file="annotations/instances_train2017.json",
                data_prefix=dict(img="train2017/"),
                filter_cfg=dict(filter_empty_gt=True, min_size=32),
                pipeline=train_pipeline,
                backend_args=backend_args,
            ),
            dict(
                type=dataset_type,
                data_root=synthetic_root,
                ann_file=synthetic_ann_file,
                # detdiffusion writes file names as "images/<layout>_<k>.png", relative to the
                # generation folder, so the image prefix is the folder itself (not "images/").
                data_prefix=dict(img=""),
                filter_cfg=dict(filter_empty_gt=True, min_size=32),
                pipeline=train_pipeline,
                backend_args=backend_args,
            ),
        ],
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file="annotations/instances_val2017.json",
        data_prefix=dict(img="val2017/"),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args,
    ),
)
test_dataloader = val_dataloader

val_evaluator = dict(
    type="CocoMetric",
    ann_file=data_root + "annotations/instances_val2017.json",
    metric="bbox",
    format_only=False,
    backend_args=backend_args,
)
test_evaluator = val_evaluator

# ---------------------------------------------------------------------------------------------------
# Schedule: configs/_base_/schedules/schedule_1x.py (lr 0.02 is for 8 GPUs x 2 images)
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=12, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0001)
)
# On another total batch size, `--auto-scale-lr` scales lr from this base.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# ---------------------------------------------------------------------------------------------------
# Runtime: configs/_base_/default_runtime.py
default_scope = "mmdet"
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=1),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="DetVisualizationHook"),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="DetLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(type="LogProcessor", window_size=50, by_epoch=True)
log_level = "INFO"
load_from = None
resume = False
