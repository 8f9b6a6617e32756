"""``python -m robot_sac.cli``: what `up` and the tests spawn, the same as the console script."""

from robot_sac.cli import main

if __name__ == "__main__":
    main()
