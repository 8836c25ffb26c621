"""Extract the student from a distillation checkpoint.

    python tools/export_student.py work_dirs/x/epoch_12.pth student.pth

The output loads with the plain student config in stock mmdet / mmseg
``tools/test.py``.
"""
import argparse
import os

from mmlckd.apis import export_student


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='distillation checkpoint')
    parser.add_argument('out', help='output student checkpoint')
    args = parser.parse_args(argv)
    if os.path.isdir(args.out):
        raise SystemExit(
            f'error: the output {args.out!r} is a folder; give the path of '
            'the file to write, e.g. '
            f'{os.path.join(args.out, "student.pth")}')
    try:
        path = export_student(args.checkpoint, args.out)
    except (OSError, ValueError) as e:  # missing, unreadable, disk full
        raise SystemExit(f'error: {e}') from None
    print(f'student written to {path}')


if __name__ == '__main__':
    main()
