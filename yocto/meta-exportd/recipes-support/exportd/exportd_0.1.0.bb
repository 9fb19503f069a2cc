SUMMARY = "exportd - direct-export agent for call-recording appliances"
DESCRIPTION = "Watches the recorder spool and archives every conversation \
exactly once to a folder or S3 target."
HOMEPAGE = "https://exportd.invalid/"
SECTION = "utils"
CVE_PRODUCT = "exportd"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# Where the sources come from: set both in local.conf or a .bbappend, e.g.
#   EXPORTD_SRC_URI = "git://git.example.com/exportd.git;protocol=ssh;branch=main"
#   SRCREV:pn-exportd = "<commit>"
# (or, for a developer checkout: INHERIT += "externalsrc"
#  EXTERNALSRC:pn-exportd = "/path/to/exportd")
EXPORTD_SRC_URI ??= "git://git.example.invalid/exportd.git;protocol=https;branch=main"
SRC_URI = "${EXPORTD_SRC_URI}"
# Release images must pin SRCREV; AUTOREV (the default) follows the branch head.
SRCREV ??= "${AUTOREV}"
# S is left at its default: from whinlatter (5.3) on the git fetcher unpacks
# into ${UNPACKDIR}/${BP}, which is the default S. (Older series with
# meta-rust-bin: S = "${WORKDIR}/git".)

# Sample configuration inside the source tree, installed as the default
# /etc/exportd/exportd.toml (a conffile: upgrades keep local edits).
EXPORTD_DEFAULT_CONFIG ??= "examples/exportd.toml"

# The recorder spool root(s), space-separated: the one place it is set. It
# goes into the unit's drop-in exportd.service.d/spool.conf
# (RequiresMountsFor=, ReadOnlyPaths=: systemd expands no environment
# variables there) and into `spool = [...]` of the installed configuration.
EXPORTD_SPOOL ??= "${localstatedir}/spool/recorder"

# Crate sources (crate:// URIs + checksums) from Cargo.lock. Regenerate after
# every Cargo.lock change: yocto/gen-crates-inc.sh (or bitbake -c update_crates exportd).
require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd ptest-cargo

# ptest: the crate's unit and integration test binaries (ptest-cargo) run on
# the image's testimage; they find the installed agent through EXPORTD_BIN and
# skip tests that need a peer absent from the image (EXPORTD_LANE=qemu).
RDEPENDS:${PN}-ptest += "${PN} bash"
do_install_ptest:append() {
    sed -i '2i export EXPORTD_BIN=${bindir}/exportd EXPORTD_LANE=qemu' ${D}${PTEST_PATH}/run-ptest 2>/dev/null || true
}

# Cargo.toml's [profile.release] (lto, codegen-units=1, panic=abort, strip)
# applies; the image's own stripping/debug split still runs on the result.
CARGO_BUILD_FLAGS:append = " --bin exportd"

SYSTEMD_SERVICE:${PN} = "exportd.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

# The user must exist in read-only root file systems too, where
# systemd-sysusers cannot write /etc/passwd at boot: create it at build time;
# the sysusers.d file (same user) stays for systemd's bookkeeping.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --home-dir ${localstatedir}/lib/exportd --no-create-home \
    --shell /sbin/nologin --comment 'exportd call-recording export agent' exportd"

do_install:append() {
    # cargo.bbclass has installed ${bindir}/exportd
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/exportd.service ${D}${systemd_system_unitdir}/exportd.service
    install -d ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/exportd.sysusers ${D}${nonarch_libdir}/sysusers.d/exportd.conf
    install -m 0644 ${S}/systemd/exportd.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/exportd.conf

    install -d -m 0750 -o root -g exportd ${D}${sysconfdir}/exportd
    install -d -m 0700 -o exportd -g exportd ${D}${sysconfdir}/exportd/keys
    if [ ! -f ${S}/${EXPORTD_DEFAULT_CONFIG} ]; then
        bbfatal "no sample configuration at ${EXPORTD_DEFAULT_CONFIG} in the source tree (set EXPORTD_DEFAULT_CONFIG)"
    fi
    spool_toml=$(printf '"%s", ' ${EXPORTD_SPOOL} | sed 's/, $//')
    sed -e "s#^spool *=.*#spool     = [${spool_toml}]#" ${S}/${EXPORTD_DEFAULT_CONFIG} > ${D}${sysconfdir}/exportd/exportd.toml
    chown root:exportd ${D}${sysconfdir}/exportd/exportd.toml
    chmod 0640 ${D}${sysconfdir}/exportd/exportd.toml

    install -d ${D}${systemd_system_unitdir}/exportd.service.d
    sed -e "s#^RequiresMountsFor=.*#RequiresMountsFor=${EXPORTD_SPOOL}#" \
        -e "s#^ReadOnlyPaths=.*#ReadOnlyPaths=${EXPORTD_SPOOL}#" \
        ${S}/systemd/exportd.service.d/spool.conf > ${D}${systemd_system_unitdir}/exportd.service.d/spool.conf
    chmod 0644 ${D}${systemd_system_unitdir}/exportd.service.d/spool.conf

    # Completions and the man page: generated from the command table
    # (`exportd completions SHELL`, `exportd manpage`) and committed under
    # dist/ (the cross-built binary cannot run on the build host).
    install -D -m 0644 ${S}/dist/completions/exportd.bash ${D}${datadir}/bash-completion/completions/exportd
    install -D -m 0644 ${S}/dist/completions/_exportd ${D}${datadir}/zsh/site-functions/_exportd
    install -D -m 0644 ${S}/dist/completions/exportd.fish ${D}${datadir}/fish/vendor_completions.d/exportd.fish
    install -D -m 0644 ${S}/dist/exportd.1 ${D}${mandir}/man1/exportd.1
}

FILES:${PN} += "\
    ${systemd_system_unitdir}/exportd.service \
    ${systemd_system_unitdir}/exportd.service.d/spool.conf \
    ${datadir}/bash-completion/completions/exportd \
    ${datadir}/zsh/site-functions/_exportd \
    ${datadir}/fish/vendor_completions.d/exportd.fish \
    ${nonarch_libdir}/sysusers.d/exportd.conf \
    ${nonarch_libdir}/tmpfiles.d/exportd.conf \
    ${sysconfdir}/exportd \
"
CONFFILES:${PN} = "${sysconfdir}/exportd/exportd.toml"
