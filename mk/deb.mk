# Debian package. Included by the Makefile (-include mk/*.mk).
#
#   make deb        build ./vane_<version>_<arch>.deb with dpkg-buildpackage (installs the
#                   build dependencies with apt when missing), then lintian and
#                   systemd-analyze verify on the result
#   make deb-test   build, then install the package into a throwaway Debian 12 chroot
#                   (build/deb-test-root) and check install, service account, daemon,
#                   management socket, conffiles, remove and purge; DEB=path skips the build
#   make deb-lint   lintian and systemd-analyze on an already built package
#   make deb-clean  remove the build and test directories (the cached chroots too)
#
# The build runs in a copy of the tree under build/deb/, so the working tree (and its
# .venv) is never touched by debian/rules. systemd-analyze verify runs against the
# unpacked package (build/deb/root) completed with the host's own unit files.

_deb_saved_goal := $(.DEFAULT_GOAL)

DEB_BUILD_DIR ?= build/deb
DEB_VERSION   := $(shell head -n1 debian/changelog | cut -d' ' -f2 | tr -d '()')
DEB_ARCH      := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_FILE      := vane_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_SUDO      := $(if $(filter 0,$(shell id -u)),,sudo)
DEB_PATH      := /usr/sbin:/usr/bin:/sbin:/bin

.PHONY: deb deb-deps deb-lint deb-test deb-clean

define DEB_LINT
	@set -e; test -f $(DEB_BUILD_DIR)/$(DEB_FILE) || { echo "deb-lint: run make deb first" >&2; exit 1; }; \
	echo "deb: lintian"; \
	rc=0; lintian --fail-on error --tag-display-limit 0 $(DEB_BUILD_DIR)/vane_$(DEB_VERSION)_$(DEB_ARCH).changes \
	  >$(DEB_BUILD_DIR)/lintian.txt 2>&1 || rc=$$?; \
	grep -v 'running with root privileges' $(DEB_BUILD_DIR)/lintian.txt || true; \
	[ $$rc -eq 0 ] || { echo "deb: lintian reported errors (exit $$rc)" >&2; exit 1; }; \
	rm -rf $(DEB_BUILD_DIR)/root; dpkg-deb -x $(DEB_BUILD_DIR)/$(DEB_FILE) $(DEB_BUILD_DIR)/root; \
	echo "deb: systemd-analyze verify vaned.service (and the example vaned.socket)"; \
	r=$(DEB_BUILD_DIR)/root; cp $$r/usr/share/doc/vane/examples/vaned.socket $$r/lib/systemd/system/; \
	cp -an /lib/systemd/system/. $$r/lib/systemd/system/; \
	for c in $$(sed -n 's/^Exec[A-Za-z]*=[-+@!:]*\([^ ]*\).*/\1/p' $$r/lib/systemd/system/vaned.service); do \
	  case $$c in /*) p=$$c;; *) p=$$(command -v $$c) || continue;; esac; \
	  [ -e $$r$$p ] || [ -L $$r$$p ] || install -D $$p $$r$$p; \
	done; \
	out=$$(systemd-analyze verify --man=no --root=$$r \
	  /lib/systemd/system/vaned.service /lib/systemd/system/vaned.socket 2>&1) || { echo "$$out" >&2; exit 1; }; \
	[ -z "$$out" ] || { echo "$$out" >&2; echo "deb: systemd-analyze verify complained" >&2; exit 1; }; \
	echo "deb: lintian clean of errors, units verified"
endef


deb-deps:
	@if ! command -v dpkg-checkbuilddeps >/dev/null 2>&1 || ! dpkg-checkbuilddeps debian/control >/dev/null 2>&1 \
	    || ! command -v lintian >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1; then \
	  echo "deb: installing the build dependencies with apt"; \
	  set -e; export DEBIAN_FRONTEND=noninteractive; \
	  $(DEB_SUDO) apt-get update -qq; \
	  $(DEB_SUDO) apt-get install -y -qq --no-install-recommends dpkg-dev fakeroot lintian >/dev/null; \
	  command -v systemd-analyze >/dev/null 2>&1 || $(DEB_SUDO) apt-get install -y -qq --no-install-recommends systemd >/dev/null; \
	  $(DEB_SUDO) apt-get build-dep -y -qq ./ >/dev/null; \
	  dpkg-checkbuilddeps debian/control; \
	fi

deb: deb-deps
	@set -e; start=$$(date +%s); \
	up=$$(sed -n 's/^__version__ = "\(.*\)"/\1/p' vane/__init__.py); \
	case "$(DEB_VERSION)" in "$$up"-*) ;; *) \
	  echo "deb: debian/changelog is at $(DEB_VERSION) but vane/__init__.py says $$up;" \
	       "add a changelog entry $$up-1 first" >&2; exit 1;; esac; \
	rm -rf $(DEB_BUILD_DIR); mkdir -p $(DEB_BUILD_DIR)/src; \
	tar -cf - --exclude-vcs --exclude=./.venv --exclude=./build --exclude=./dist \
	    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
	    --exclude='./*.deb' --exclude='./*.buildinfo' --exclude='./*.changes' --exclude=./bench/results . \
	  | tar -xf - -C $(DEB_BUILD_DIR)/src; \
	echo "deb: dpkg-buildpackage -us -uc -b in $(DEB_BUILD_DIR)/src (log: $(DEB_BUILD_DIR)/build.log)"; \
	if ! (cd $(DEB_BUILD_DIR)/src && env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME PATH=$(DEB_PATH) \
	      dpkg-buildpackage -us -uc -b) >$(DEB_BUILD_DIR)/build.log 2>&1; then \
	  tail -n 40 $(DEB_BUILD_DIR)/build.log >&2; echo "deb: build failed, see $(DEB_BUILD_DIR)/build.log" >&2; exit 1; fi; \
	grep -h '^check-pins:' $(DEB_BUILD_DIR)/build.log || true; \
	rm -f ./vane_*.deb; cp $(DEB_BUILD_DIR)/$(DEB_FILE) ./$(DEB_FILE); \
	echo "deb: built ./$(DEB_FILE) ($$(du -h $(DEB_FILE) | cut -f1)) in $$(( $$(date +%s) - start )) s"
	$(DEB_LINT)

deb-lint:
	$(DEB_LINT)

deb-test: $(if $(DEB),,deb)
	@$(DEB_SUDO) packaging/deb-test $(or $(DEB),./$(DEB_FILE))

deb-clean:
	@if findmnt -rn -o TARGET | grep -q "^$(CURDIR)/build/deb-test-"; then \
	  echo "deb-clean: a deb-test is running (something is mounted below build/deb-test-*)" >&2; exit 1; fi
	$(DEB_SUDO) rm -rf --one-file-system $(DEB_BUILD_DIR) build/deb-test-* ./vane_*.deb

.DEFAULT_GOAL := $(_deb_saved_goal)
