"""Finding the subject in a photo, for editing and evaluation alike: masks from files and boxes
(`siso.vision.masks`), Grounding DINO detection and crops (`siso.vision.grounding`), and SAM segmentation of a
detection (`siso.vision.segmenter`)."""
