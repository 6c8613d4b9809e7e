import re

from setuptools import find_namespace_packages, setup

with open("README.md", encoding="utf-8") as readme:
    long_description = readme.read()
# One version: Metaflow reports it from the extension's top-level module.
with open("metaflow_extensions/torchrun/toplevel/torchrun_toplevel.py", encoding="utf-8") as module:
    version = re.search(r'^__version__ = "([^"]+)"$', module.read(), re.M).group(1)

setup(
    name="metaflow-torchrun",
    version=version,
    description="Run unchanged torchrun programs across the nodes of a Metaflow @parallel step",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_namespace_packages(
        include=["rendezvous", "rendezvous.*", "metaflow_extensions.*"]
    ),
    # torch 2.6 is the oldest release the compatibility run checks (make compat,
    # docs/compatibility.md); what differs between releases is handled in
    # rendezvous/torch_compat.py. The test suite runs on torch 2.13.0 and
    # metaflow 2.19.39.
    install_requires=["torch>=2.6", "metaflow>=2.19.39"],
    # numpy only silences torch's "Failed to initialize NumPy" warning in test logs.
    # moto's S3 server and the Kubernetes client (which Metaflow's @kubernetes needs to
    # build a JobSet) serve the remote rehearsal (tests/rehearsal). Lightning and
    # Accelerate run their own scripts through @torchrun
    # (tests/integration/test_ecosystem.py); both accept the torch installed first
    # (torch==2.13.0) and pull no other. IPython's shell runs a notebook's cells for
    # Metaflow's NBRunner (tests/integration/test_metaflow_decorators.py).
    # pytest-xdist runs the suite on both cores (make test); 3.2 brought --dist worksteal.
    extras_require={"test": ["pytest", "pytest-timeout", "hypothesis", "numpy",
                             "moto[server]>=5.0", "kubernetes>=30.0",
                             "lightning>=2.6", "accelerate>=1.0", "ipython",
                             "pytest-xdist>=3.2"]},
    entry_points={
        # torch calls the loaded object with no arguments and registers what it
        # returns under the entry point's name.
        "torchrun.handlers": ["metaflow = rendezvous._entry_point:handler_creator"],
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
