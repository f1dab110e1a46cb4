"""Object detection on our ResNet: RetinaNet (Lin et al. 2017) and Faster R-CNN (Ren et al. 2015) with a feature
pyramid, in torchvision's parameter layouts, trained and measured on COCO-format folders.

    from resnet50.detect import create_detector, postprocess, load_detector

    model = create_detector(num_classes=10, in_chans=1, image_size=128, mean=(0.286,), std=(0.353,))
    cls_logits, deltas = model(images)                 # (N, HWA, K), (N, HWA, 4): the network alone (ONNX-able)
    detections = model.postprocess((cls_logits, deltas), (128, 128))   # boxes, scores, labels per image

    rcnn = create_fasterrcnn(num_classes=11, in_chans=1, image_size=128, mean=(0.286,), std=(0.353,))
    detections = rcnn.postprocess(rcnn(images), (128, 128))        # the same records; 11 = 10 classes + background

Modules, in the order data flows: ``nms`` (box ops, batched NMS), ``fpn`` (the backbone with its pyramid),
``retinanet`` (config, anchors, head, losses, post-processing), ``roi_align`` and ``fasterrcnn`` (Faster R-CNN in
torchvision's layout: ``create_fasterrcnn``, ``FasterRCNN.loss``, ``FasterRCNN.postprocess``), ``detectors`` (the
two by name: ``--detector retinanet|fasterrcnn``), ``coco`` (data checks, batches, pycocotools), ``checkpoint``
(our files and torchvision's), ``train``, ``evaluate``, ``predict`` (pictures), ``export`` (ONNX), ``demo``. The CLI
is ``resnet50 detect train|evaluate|predict|export|demo``.
"""

from .checkpoint import DetectorCheckpoint, load_detector, save_detector
from .fasterrcnn import FasterRCNN, FasterRCNNConfig, create_fasterrcnn
from .nms import batched_nms, box_iou, nms
from .retinanet import DetectorConfig, RetinaNet, create_detector, num_params, postprocess
from .roi_align import MultiScaleRoIAlign, roi_align

__all__ = ["DetectorCheckpoint", "DetectorConfig", "FasterRCNN", "FasterRCNNConfig", "MultiScaleRoIAlign", "RetinaNet",
           "batched_nms", "box_iou", "create_detector", "create_fasterrcnn", "load_detector", "nms", "num_params",
           "postprocess", "roi_align", "save_detector"]
