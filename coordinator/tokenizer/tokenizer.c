/* placeholder: replaced by the tokenizer implementation */
#include "tokenizer.h"
