"""Product tools, apart from the student's core: benchmarks, course export, GPU-resident augmentation,
the data checker, the dataset catalog and downloads, subject fingerprints and the package-shape measures.

Tools import the core (data, models, train, ...); the core never imports a tool. The one place the
core reaches a tool is by name, at run time: ``data.augment_on: device`` loads
:mod:`medseg_tutorial.tools.gpu_augment` (see ``loaders.AUGMENT_ON``).
"""
