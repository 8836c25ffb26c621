# Ablation: london_faster-rcnn_r101_r18_fpn_8xb2-1x_voc0712.py without the
# Lipschitz term (OFD only), so the pair isolates the LONDON term.
_base_ = './london_faster-rcnn_r101_r18_fpn_8xb2-1x_voc0712.py'

model = dict(lipschitz_loss=None)
