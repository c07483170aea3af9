#!/bin/sh
# The browser the review-page tests drive: Debian's chromium (no browser is downloaded by
# playwright; the tests point it at /usr/bin/chromium). Installs it with apt when it is
# missing and this user may; otherwise says what to run. Exit 0 once chromium runs.
set -eu
BROWSER=${IMMUNO_CHROMIUM:-/usr/bin/chromium}
if [ -x "$BROWSER" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the review-page tests (apt-get)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
    exit 0
fi
echo "chromium is missing: run 'sudo apt-get install chromium' (Debian) or set IMMUNO_CHROMIUM" \
    "to a Chromium binary; the review-page tests need it" >&2
exit 1
