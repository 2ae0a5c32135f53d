"""Where annotations and images come from: Prodigy formats, images, label maps, data sets."""
