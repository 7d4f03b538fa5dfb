/* placeholder */
int loom_st_placeholder_;
