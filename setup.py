from setuptools import find_packages, setup


def readme():
    with open('README.md', encoding='utf-8') as f:
        return f.read()


def version():
    ns = {}
    with open('mmlckd/version.py', encoding='utf-8') as f:
        exec(f.read(), ns)
    return ns['__version__']


setup(
    name='mmlckd',
    version=version(),
    description='LONDON: Lipschitz-continuity-guided knowledge distillation '
    'for OpenMMLab (MMDetection 3.x / MMSegmentation 1.x)',
    long_description=readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=('mmlckd', 'mmlckd.*')),
    python_requires='>=3.8',
    # Supported ranges; requirements/*.txt pin the tested versions (inside
    # them) that tools/setup_env.sh installs. torch is not listed: install
    # the build for your machine first (the README's set-up does).
    install_requires=['mmengine>=0.10.7,<0.11', 'mmcv>=2.0.0,<2.2.0'],
    extras_require={
        'det': ['mmdet>=3.3.0,<3.4'],
        # mmseg 1.2.2 imports ftfy and regex unconditionally
        'seg': ['mmsegmentation>=1.2.2,<1.3', 'ftfy', 'regex'],
    },
    license='Apache License 2.0',
    zip_safe=False)
