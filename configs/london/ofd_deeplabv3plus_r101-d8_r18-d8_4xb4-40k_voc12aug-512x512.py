# Ablation: london_deeplabv3plus_r101-d8_r18-d8_4xb4-40k_voc12aug-512x512.py
# without the Lipschitz term: the OFD VOC segmentation setting alone.
_base_ = './london_deeplabv3plus_r101-d8_r18-d8_4xb4-40k_voc12aug-512x512.py'

model = dict(lipschitz_loss=None)
