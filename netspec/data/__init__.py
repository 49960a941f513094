"""Reading data: the sources Caffe's data layers name, and the datasets netspec ships."""
