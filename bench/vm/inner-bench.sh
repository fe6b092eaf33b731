#!/bin/sh
# The bench guest's job: stay up 2 s (the host samples memory meanwhile), then power off.
sleep 2
