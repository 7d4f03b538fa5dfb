/* placeholder */
int loom_json_placeholder_;
