/* placeholder */
int loom_fileutil_placeholder_;
