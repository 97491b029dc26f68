import sys
print(open("/safe_data/input.txt").read())
